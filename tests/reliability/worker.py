"""Test-only runner: one Engine process built from a JSON spec in argv[1], run until idle.

The reliability tests and scripts/chaos.py start it as a subprocess so it can be killed with
SIGKILL (or kill itself at a crash point through ENGINE_CRASH_AT) like a real worker. It
prints one JSON line with the run summary and exits 0, or exits 1 with the error on stderr.

Spec keys: dsn, prefix (table-name prefix), base_url, api_key, job (name), key_type
("int"/"str"), worker_id, settings (EngineSettings overrides), log_level.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys
from dataclasses import replace
from typing import Any

from engine import ApiSettings, EngineError, EngineSettings, StoreSettings
from engine.engine import Engine
from engine.job import JobSpec
from tests.integration.helpers import make_job


def store_settings(spec: dict[str, Any]) -> StoreSettings:
    """Store settings over the prefixed tables of a spec."""
    prefix = spec["prefix"]
    return StoreSettings(
        dsn=spec["dsn"],
        items_table=f"{prefix}items",
        batches_table=f"{prefix}batches",
        meta_table=f"{prefix}meta",
        pool_size=int(spec.get("pool_size", 4)),
    )


def job_for(spec: dict[str, Any]) -> JobSpec:
    """The job over the prefixed source table (make_job's, with the key type of the spec)."""
    job = make_job(f"{spec['prefix']}src", spec.get("job", "t"))
    if spec.get("key_type", "int") != "int":
        job = replace(job, source=replace(job.source, key_type=spec["key_type"]))
    return job


async def run(spec: dict[str, Any]) -> dict[str, Any]:
    """Run one engine until idle and return its summary as a dict."""
    settings = replace(EngineSettings(), **spec.get("settings", {}))
    if spec.get("worker_id"):
        settings = replace(settings, worker_id=spec["worker_id"])
    api = ApiSettings(
        api_key=spec.get("api_key", "sk-test-reliability"),
        base_url=spec["base_url"],
        timeout_s=float(spec.get("api_timeout_s", 30)),
    )
    async with Engine(job_for(spec), store=store_settings(spec), api=api,
                      settings=settings) as engine:
        summary = await engine.run(until_idle=True, install_signal_handlers=True)
    return {
        "worker_id": engine.worker_id,
        "batches_submitted": summary.batches_submitted,
        "batches_applied": summary.batches_applied,
        "rows_applied": summary.rows_applied,
        "counts": summary.counts,
    }


def main(argv: list[str]) -> int:
    """Parse the spec, run, print the summary line; 1 with the error on stderr."""
    spec = json.loads(argv[1])
    logging.basicConfig(
        level=spec.get("log_level", "WARNING"),
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        result = asyncio.run(run(spec))
    except EngineError as exc:
        print(f"error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
