"""Secrets: the API key and the DSN password never appear in logs, errors, status output, the
engine's tables or any file it writes. PostgreSQL with trust auth accepts any password, so the
DSN carries a real-looking one.
"""

from __future__ import annotations

import json
from pathlib import Path

from engine.emulator import Emulator, EmulatorConfig, FaultConfig
from tests.integration.helpers import fetch
from tests.reliability import harness
from tests.reliability.cli import cli, write_job
from tests.support import PG_DSN, _target

API_KEY = "sk-proj-SECRETKEY0123456789abcdefXYZ"
PASSWORD = "SECRETVALUE"


def _leaks(text: str) -> list[str]:
    return [s for s in (API_KEY, PASSWORD, API_KEY[8:24]) if s in text]


async def test_secrets_never_leak(tmp_path: Path) -> None:
    target = _target("postgresql", PG_DSN)
    dsn = PG_DSN.rstrip(";") + f";Pwd={PASSWORD};"
    # Some faults, so retries, warnings and errors are logged too.
    faults = FaultConfig(line_error_rate=0.2, http_429_rate=0.2)
    async with Emulator(EmulatorConfig(seed=81, faults=faults)) as emu:
        try:
            await harness.prepare(target, harness.texts(30))
            job_dir = tmp_path / "job"
            job = write_job(job_dir, target)
            env = {"OPENAI_API_KEY": API_KEY, "OPENAI_BASE_URL": emu.base_url}
            common = ("--job", str(job), "--dsn", dsn)
            outputs = []
            for args in (
                ("-vv", "--log-format", "json", "run", *common, "--until-idle",
                 "--spool-dir", str(job_dir / "spool")),
                ("-vv", "status", *common),
                ("status", *common, "--json"),
                ("-vv", "doctor", *common),
                # An error path: the database refuses the connection.
                ("-vv", "status", "--job", str(job), "--dsn",
                 dsn.replace("Port=5432", "Port=1")),
            ):
                result = await cli(*args, env=env)
                outputs.append((args[:4], result))
            assert outputs[0][1].code == 0, outputs[0][1].stderr[-3000:]
            # The outputs are real: they name the database host and the rows.
            assert "127.0.0.1" in outputs[3][1].stdout + outputs[3][1].stderr
            # status --json shows exactly the row states the database holds, all 30 resolved.
            held = {str(s): int(n) for s, n in fetch(
                target.dsn, f"SELECT state, COUNT(*) FROM {target.prefix}items GROUP BY state")}
            shown = json.loads(outputs[2][1].stdout)["rows"]
            assert {s: n for s, n in shown.items() if n} == held
            assert set(held) <= {"done", "dead"}, held
            assert sum(held.values()) == 30, held
            assert outputs[-1][1].code == 1  # the database failed: exit 1, not a crash
            for args, result in outputs:
                assert _leaks(result.stdout + result.stderr) == [], args
            for path in tmp_path.rglob("*"):
                if path.is_file():
                    assert _leaks(path.read_bytes().decode("utf-8", "replace")) == [], path
            for table in ("batches", "items", "meta"):
                rows = fetch(target.dsn, f"SELECT * FROM {target.prefix}{table}")
                assert _leaks(repr(rows)) == [], table
        finally:
            harness.cleanup(target)
