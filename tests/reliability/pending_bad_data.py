"""Failing until the store handles them; run explicitly (not collected by default):

    .venv/bin/python -m pytest -q tests/reliability/pending_bad_data.py

- Invalid UTF-8 in a source row (SQLite keeps any bytes): the SQLite ODBC driver hands the
  text over as UTF-16 with a lone surrogate, pyodbc raises UnicodeDecodeError inside
  Connection._run (engine/store/pool.py), which is not a pyodbc.Error, so it escapes
  Store.claim -> fetch_source_rows unclassified and the producer stage kills the engine. The
  row is released and claimed again by the next run: one poison row stops the whole job.
- An answer that does not fit its column (text longer than a VARCHAR, an integer beyond a
  32-bit INT) when the mapping has no max_length: PostgreSQL raises 22001/22003 and MariaDB
  1406/1264 for the whole apply chunk; Store.apply_results raises StoreError and the writer
  stage kills the engine. README promises "a value that does not fit its column: retried, one
  attempt used". Every restart downloads the same output and dies again.

Move these back into test_bad_data.py once fixed.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import orjson

from engine.emulator import Emulator, EmulatorConfig
from engine.job import ColumnMapping, JobSpec
from tests.conftest import DbTarget
from tests.integration.helpers import SCHEMA, connect, fetch
from tests.integration.test_engine import fast_settings
from tests.reliability import harness
from tests.reliability.test_bad_data import _run, _spec


async def test_invalid_utf8_in_the_source_row(sqlite_db: DbTarget, tmp_path: Path) -> None:
    # SQLite stores whatever bytes it is given: a lone surrogate (CESU-8 ED A0 80) and a
    # stray continuation byte. The engine must neither die nor send invalid JSON.
    async with Emulator(EmulatorConfig(seed=62)) as emu:
        await harness.prepare(sqlite_db, ["placeholder", "placeholder", "fine"])
        conn = connect(sqlite_db.dsn)
        try:
            conn.cursor().execute(
                f"UPDATE {sqlite_db.prefix}src SET body = CAST(X'6C6F6E65EDA08020' AS TEXT) "
                "WHERE id = 1"
            )
            conn.cursor().execute(
                f"UPDATE {sqlite_db.prefix}src SET body = CAST(X'737472617980' AS TEXT) "
                "WHERE id = 2"
            )
        finally:
            conn.close()
        job = harness.job_for(_spec(sqlite_db))
        await _run(sqlite_db, emu, job, fast_settings(tmp_path))
        figures = harness.measure(sqlite_db, emu, 0)
        assert figures.problems() == [], figures
        assert not [b for b in emu.record.batches.values() if b.status == "failed"]


def _oversized_job(target: DbTarget) -> JobSpec:
    """Answers whose name overflows VARCHAR(200) and whose score overflows a 32-bit INT half
    the time; the mapping has no max_length, so only the database can refuse them."""
    schema = orjson.loads(orjson.dumps(SCHEMA))
    schema["properties"]["name"] = {"type": "string", "minLength": 120, "maxLength": 280}
    schema["properties"]["score"] = {"type": "integer", "minimum": 0, "maximum": 4_000_000_000}
    job = harness.job_for(_spec(target))
    columns = (
        ColumnMapping(field="name", column="out_name"),
        ColumnMapping(field="tags", column="out_tags", kind="json"),
        ColumnMapping(field="score", column="out_score", kind="int"),
    )
    return replace(job, output_schema=schema, columns=columns)


async def test_answers_that_do_not_fit_their_columns(
    server_db: DbTarget, tmp_path: Path
) -> None:
    async with Emulator(EmulatorConfig(seed=63)) as emu:
        try:
            await harness.prepare(server_db, harness.texts(30))
            settings = fast_settings(tmp_path, max_attempts=3)
            summary = await _run(server_db, emu, _oversized_job(server_db), settings)
            figures = harness.measure(server_db, emu, 0)
            assert figures.problems() == [], figures
            assert summary.counts["dead"] > 0
            rows = fetch(server_db.dsn,
                         f"SELECT out_name, out_score FROM {server_db.prefix}src "
                         "WHERE processed IS NOT NULL")
            assert all(len(name) <= 200 and score < 2**31 for name, score in rows)
        finally:
            harness.cleanup(server_db)


