"""Secrets: the API key and the DSN password never appear in logs, errors, status output, the
engine's tables or any file it writes. PostgreSQL with trust auth accepts any password, so the
DSN carries a real-looking one, written in each form ODBC allows: plain, brace-quoted with a
``;`` inside, and with a ``}}`` escape inside the braces.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from engine.emulator import Emulator, EmulatorConfig, FaultConfig
from tests.integration.helpers import fetch
from tests.reliability import harness
from tests.reliability.cli import CliResult, cli, write_job
from tests.support import PG_DSN, _target

API_KEY = "sk-proj-SECRETKEY0123456789abcdefXYZ"
# (the value written after Pwd=, the pieces of it that must never be seen)
PASSWORDS = {
    "plain": ("SECRETVALUE", ["SECRETVALUE"]),
    "braced": ("{Hb;Secret pw9}", ["Hb;Secret pw9", "Secret pw9"]),
    "escaped": ("{Xq;b}}c Secret9}", ["Xq;b}c Secret9", "Xq;b}}c Secret9", "c Secret9"]),
}


def _leaks(text: str, pieces: list[str]) -> list[str]:
    return [s for s in (API_KEY, API_KEY[8:24], *pieces) if s in text]


async def _make_resumes(*args: str) -> CliResult:
    """Run scripts/make_resumes.py as a user would."""
    proc = await asyncio.create_subprocess_exec(
        harness.PYTHON, str(harness.REPO / "scripts" / "make_resumes.py"), *args,
        cwd=str(harness.REPO), stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 90)
    assert proc.returncode is not None
    return CliResult(proc.returncode, out.decode(), err.decode())


@pytest.mark.parametrize("form", list(PASSWORDS))
async def test_secrets_never_leak(tmp_path: Path, form: str) -> None:
    target = _target("postgresql", PG_DSN)
    written, pieces = PASSWORDS[form]
    dsn = PG_DSN.rstrip(";") + f";Pwd={written};"
    unreachable = dsn.replace("Port=5432", "Port=1")
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
                ("-vv", "run", *common, "--until-idle", "--spool-dir", str(job_dir / "spool")),
                ("-vv", "status", *common),
                ("status", *common, "--json"),
                ("-vv", "doctor", *common),
                # Error paths: the database refuses the connection.
                ("-vv", "status", "--job", str(job), "--dsn", unreachable),
                ("-vv", "--log-format", "json", "run", "--job", str(job), "--dsn", unreachable),
                ("doctor", "--job", str(job), "--dsn", unreachable),
            ):
                result = await cli(*args, env=env)
                outputs.append((args[:4], result))
            made = await _make_resumes("--rows", "1", "--dsn", unreachable)
            outputs.append((("make_resumes",), made))
            assert outputs[0][1].code == 0, outputs[0][1].stderr[-3000:]
            # The outputs are real: they name the database host, the rows, the DSN's attributes.
            assert "127.0.0.1" in outputs[4][1].stdout + outputs[4][1].stderr
            assert "database: Driver={PostgreSQL Unicode}" in outputs[1][1].stderr
            # status --json shows exactly the row states the database holds, all 30 resolved.
            held = {str(s): int(n) for s, n in fetch(
                target.dsn, f"SELECT state, COUNT(*) FROM {target.prefix}items GROUP BY state")}
            shown = json.loads(outputs[3][1].stdout)["rows"]
            assert {s: n for s, n in shown.items() if n} == held
            assert set(held) <= {"done", "dead"}, held
            assert sum(held.values()) == 30, held
            assert outputs[-4][1].code == 1  # the database failed: exit 1, not a crash
            assert "FAIL database" in outputs[-2][1].stdout, outputs[-2][1].stdout
            assert "Uid=postgres" in outputs[-2][1].stdout
            assert "database error on" in outputs[-1][1].stderr, outputs[-1][1].stderr
            for args, result in outputs:
                assert _leaks(result.stdout + result.stderr, pieces) == [], args
            for path in tmp_path.rglob("*"):
                if path.is_file():
                    text = path.read_bytes().decode("utf-8", "replace")
                    assert _leaks(text, pieces) == [], path
            for table in ("batches", "items", "meta"):
                rows = fetch(target.dsn, f"SELECT * FROM {target.prefix}{table}")
                assert _leaks(repr(rows), pieces) == [], table
        finally:
            harness.cleanup(target)
