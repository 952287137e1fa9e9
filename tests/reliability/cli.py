"""Run ``python -m engine`` as a user would: a job file on disk, a DSN, the API in the env."""

from __future__ import annotations

import asyncio
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.integration.helpers import SCHEMA
from tests.reliability.harness import PYTHON, REPO
from tests.support import DbTarget


@dataclass
class CliResult:
    """Exit code and output of one command."""

    code: int
    stdout: str
    stderr: str


def _toml(value: Any) -> str:
    return json.dumps(value)  # JSON strings, numbers and arrays are valid TOML values


def write_job(
    directory: Path, target: DbTarget, *, source: dict[str, Any] | None = None,
    engine: dict[str, Any] | None = None, default_timing: bool = False, name: str = "t",
) -> Path:
    """Write a job file over make_source's table (overrides per [source] key) and its schema.

    With default_timing the engine's intervals, leases and grace period are its defaults,
    as a user's job file leaves them; otherwise they are shortened for quick tests.
    """
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "schema.json").write_text(json.dumps(SCHEMA))
    src = {
        "table": f"{target.prefix}src", "key_column": "id", "key_type": "int",
        "text_columns": ["body"], "processed_column": "processed",
    }
    src.update(source or {})
    settings = {
        "batch_size": 10, "min_check_interval_s": 0.005, "check_interval_s": 0.05,
        "lease_s": 5, "shutdown_grace_period_s": 5, "spool_dir": str(directory / "spool"),
    }
    if default_timing:
        settings = {"batch_size": 10, "spool_dir": str(directory / "spool")}
    settings.update(engine or {})
    lines = [
        f'name = "{name}"', 'model = "gpt-4o-mini"', 'endpoint = "/v1/chat/completions"', "",
        "[database]",
        f"dsn = {_toml(target.dsn)}",
        f'items_table = "{target.prefix}items"',
        f'batches_table = "{target.prefix}batches"',
        f'meta_table = "{target.prefix}meta"', "",
        "[source]", *(f"{k} = {_toml(v)}" for k, v in src.items()), "",
        "[prompt]", 'system = "Extract the name and tags."', 'user = "Text: {body}"', "",
        "[output]", 'schema_name = "thing"', 'schema_file = "schema.json"', "",
        "[[columns]]", 'field = "name"', 'column = "out_name"', "max_length = 200", "",
        "[[columns]]", 'field = "tags"', 'column = "out_tags"', 'kind = "json"', "",
        "[[columns]]", 'field = "score"', 'column = "out_score"', 'kind = "int"', "",
        "[engine]", *(f"{k} = {_toml(v)}" for k, v in settings.items()), "",
    ]
    path = directory / "job.toml"
    path.write_text("\n".join(lines))
    return path


async def start_cli(*args: str, env: dict[str, str] | None = None,
                    cwd: Path | None = None) -> asyncio.subprocess.Process:
    """Start ``python -m engine ARGS`` with only the given ENGINE_/OPENAI_ variables set."""
    child_env = {k: v for k, v in os.environ.items()
                 if not k.startswith(("ENGINE_", "OPENAI_"))}
    child_env.update(env or {})
    return await asyncio.create_subprocess_exec(
        PYTHON, "-m", "engine", *args, cwd=str(cwd or REPO), env=child_env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )


async def cli(*args: str, env: dict[str, str] | None = None, timeout_s: float = 90,
              cwd: Path | None = None) -> CliResult:
    """Run ``python -m engine ARGS`` and return its exit code and output."""
    proc = await start_cli(*args, env=env, cwd=cwd)
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout_s)
    except TimeoutError:
        proc.kill()
        out, err = await proc.communicate()
        raise AssertionError(
            f"engine {' '.join(args)} hung for {timeout_s}s:\n{err.decode()[-3000:]}"
        ) from None
    assert proc.returncode is not None
    return CliResult(proc.returncode, out.decode(), err.decode())
