"""Bad configuration through the command line: a clear error, the documented exit code, and
nothing written (no item claimed, no batch, no spool file, nothing sent to the API).

The wrong API key and the unreachable API fail today (rows are claimed and bound to a draft
first; the unreachable API is waited for forever); they live in pending_bad_config.py.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from engine.emulator import Emulator, EmulatorConfig
from tests.integration.helpers import fetch
from tests.reliability import harness
from tests.reliability.cli import CliResult, cli, write_job
from tests.support import DbTarget

ROWS = 12
KEY = "sk-right-key-0123456789"


@pytest.fixture
async def emu() -> AsyncIterator[Emulator]:
    async with Emulator(EmulatorConfig(seed=71, api_key=KEY)) as emulator:
        yield emulator


def _count(target: DbTarget, table: str) -> int:
    """Rows in a table (harness.prepare created it: a missing table is a failure)."""
    return int(fetch(target.dsn, f"SELECT COUNT(*) FROM {table}")[0][0])


def assert_nothing_written(target: DbTarget, emu: Emulator, job_dir: Path) -> None:
    """No item, no batch, no applied row, no spool file, nothing at the API."""
    p = target.prefix
    assert _count(target, f"{p}items") == 0, "items were written"
    assert _count(target, f"{p}batches") == 0, "batches were written"
    processed = fetch(target.dsn, f"SELECT COUNT(*) FROM {p}src WHERE processed IS NOT NULL")
    assert processed[0][0] == 0
    spool = job_dir / "spool"
    assert not (spool.exists() and any(spool.iterdir())), "spool files were written"
    assert not emu.record.batches
    assert not [f for f in emu.storage_dir.iterdir() if f.is_file()], "files were uploaded"


async def _run(target: DbTarget, job: Path, emu: Emulator, *extra: str,
               key: str = KEY, base_url: str | None = None) -> CliResult:
    env = {"OPENAI_API_KEY": key, "OPENAI_BASE_URL": base_url or emu.base_url}
    return await cli("run", "--job", str(job), "--until-idle", *extra, env=env)


@pytest.mark.parametrize(
    ("source", "named"),
    [
        ({"table": "no_such_table"}, "source.table"),
        ({"text_columns": ["no_such_column"]}, "no_such_column"),
    ],
)
async def test_unknown_table_or_column(
    sqlite_db: DbTarget, emu: Emulator, tmp_path: Path, source: dict[str, object], named: str
) -> None:
    await harness.prepare(sqlite_db, harness.texts(ROWS))
    job = write_job(tmp_path / "job", sqlite_db, source=source)
    result = await _run(sqlite_db, job, emu)
    assert result.code == 2, result.stderr
    assert named in result.stderr
    assert "Traceback" not in result.stderr
    assert_nothing_written(sqlite_db, emu, tmp_path / "job")


@pytest.mark.parametrize(
    "source",
    [
        {"table": "src; DROP TABLE t_items; --"},
        {"key_column": 'id" OR 1=1 --'},
    ],
)
async def test_identifier_carrying_sql(
    sqlite_db: DbTarget, emu: Emulator, tmp_path: Path, source: dict[str, object]
) -> None:
    await harness.prepare(sqlite_db, harness.texts(ROWS))
    job = write_job(tmp_path / "job", sqlite_db, source=source)
    result = await _run(sqlite_db, job, emu)
    assert result.code == 2, result.stderr
    assert "error:" in result.stderr
    assert "Traceback" not in result.stderr
    assert_nothing_written(sqlite_db, emu, tmp_path / "job")
    assert fetch(sqlite_db.dsn, f"SELECT COUNT(*) FROM {sqlite_db.prefix}src")[0][0] == ROWS


@pytest.mark.parametrize(
    ("dsn", "code"),
    [
        ("Driver={PostgreSQL Unicode};Server=127.0.0.1;Port=1;Database=test;Uid=postgres;"
         "Pwd=SECRETVALUE;", 1),
        ("Driver={No Such ODBC Driver};Server=127.0.0.1;Database=x;Uid=u;Pwd=SECRETVALUE;", 2),
    ],
)
async def test_bad_dsn(
    sqlite_db: DbTarget, emu: Emulator, tmp_path: Path, dsn: str, code: int
) -> None:
    await harness.prepare(sqlite_db, harness.texts(ROWS))
    job = write_job(tmp_path / "job", sqlite_db)
    result = await _run(sqlite_db, job, emu, "--dsn", dsn)
    assert result.code == code, result.stderr
    assert "error:" in result.stderr
    assert "Traceback" not in result.stderr
    assert "SECRETVALUE" not in result.stderr + result.stdout
    assert_nothing_written(sqlite_db, emu, tmp_path / "job")


async def test_wrong_api_key(sqlite_db: DbTarget, emu: Emulator, tmp_path: Path) -> None:
    await harness.prepare(sqlite_db, harness.texts(ROWS))
    job = write_job(tmp_path / "job", sqlite_db)
    wrong = "sk-wrong-key-9876543210"
    result = await cli("run", "--job", str(job), "--until-idle",
                       env={"OPENAI_API_KEY": wrong, "OPENAI_BASE_URL": emu.base_url})
    assert result.code == 4, result.stderr
    assert "refused the key" in result.stderr
    assert wrong not in result.stderr + result.stdout
    assert_nothing_written(sqlite_db, emu, tmp_path / "job")


async def test_unreachable_api(sqlite_db: DbTarget, emu: Emulator, tmp_path: Path) -> None:
    await harness.prepare(sqlite_db, harness.texts(ROWS))
    job = write_job(tmp_path / "job", sqlite_db)
    result = await cli("run", "--job", str(job), "--until-idle", timeout_s=60,
                       env={"OPENAI_API_KEY": KEY, "OPENAI_BASE_URL": "http://127.0.0.1:9/v1"})
    assert result.code == 1, result.stderr
    assert "error:" in result.stderr
    assert_nothing_written(sqlite_db, emu, tmp_path / "job")
