"""Benchmark the store: claim and apply rows/s against the raw limit, per live database.

The raw limit is a plain pyodbc executemany of the same per-row UPDATEs on the same table
(one commit per 500 rows), so a ratio near 1 means the store adds little over the driver.

    .venv/bin/python scripts/bench_store.py [--rows N] [--only sqlite,postgresql,mysql]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import pyodbc

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from engine.job import ColumnMapping, JobSpec, SourceSpec
from engine.settings import StoreSettings
from engine.store import ApplyRow, BatchRecord, Store

DSNS = {
    "postgresql": os.environ.get(
        "ENGINE_TEST_PG_DSN",
        "Driver={PostgreSQL Unicode};Server=127.0.0.1;Port=5432;Database=test;Uid=postgres;",
    ),
    "mysql": os.environ.get(
        "ENGINE_TEST_MYSQL_DSN",
        "Driver={MariaDB Unicode};Server=127.0.0.1;Port=3306;Database=test;Uid=root;Pwd=;",
    ),
}
CLAIM_BATCH = 1000
CHUNK = 500


def _connect(dialect: str, dsn: str) -> Any:
    """Open a plain pyodbc connection set up like the store's."""
    conn = pyodbc.connect(dsn, autocommit=dialect == "sqlite")
    if dialect == "mysql":
        conn.setencoding(encoding="utf-8")
        conn.setdecoding(pyodbc.SQL_CHAR, encoding="utf-8")
        conn.setdecoding(pyodbc.SQL_WCHAR, encoding="utf-8")
    return conn


def _commit(conn: Any, dialect: str) -> None:
    """Commit (SQLite runs in autocommit with explicit BEGIN)."""
    if dialect == "sqlite":
        conn.execute("COMMIT")
    else:
        conn.commit()


def _begin(conn: Any, dialect: str) -> None:
    """Open a transaction."""
    if dialect == "sqlite":
        conn.execute("BEGIN IMMEDIATE")


def _drop(dialect: str, dsn: str, prefix: str) -> None:
    """Drop the benchmark's tables."""
    conn = _connect(dialect, dsn)
    try:
        for name in ("items", "batches", "meta", "items_workers", "meta_jobs", "src"):
            try:
                conn.execute(f"DROP TABLE {prefix}{name}")
                if dialect != "sqlite":
                    conn.commit()
            except pyodbc.Error:
                if dialect != "sqlite":
                    conn.rollback()
    finally:
        conn.close()


def _make_source(dialect: str, dsn: str, table: str, rows: int) -> None:
    """Create and fill the source table."""
    text = {"mysql": "LONGTEXT", "sqlite": "TEXT", "postgresql": "TEXT"}[dialect]
    ts = {"mysql": "DATETIME(6)", "sqlite": "TEXT", "postgresql": "TIMESTAMP"}[dialect]
    conn = _connect(dialect, dsn)
    try:
        conn.execute(
            f"CREATE TABLE {table} (userid INTEGER PRIMARY KEY, resume_text {text} NULL, "
            f"lastprocessed {ts} NULL, name {text} NULL, years INTEGER NULL)"
        )
        _commit(conn, dialect) if dialect != "sqlite" else None
        _begin(conn, dialect)
        cur = conn.cursor()
        cur.fast_executemany = False
        data = [(i, f"resume {i} " + "x" * 200) for i in range(1, rows + 1)]
        for start in range(0, rows, 5000):
            cur.executemany(
                f"INSERT INTO {table} (userid, resume_text) VALUES (?, ?)",
                data[start : start + 5000],
            )
        _commit(conn, dialect)
    finally:
        conn.close()


def _raw(dialect: str, dsn: str, prefix: str, job: str, rows: int) -> tuple[float, float]:
    """Rows/s of plain executemany: the claim UPDATE on items, the apply UPDATE on the source."""
    conn = _connect(dialect, dsn)
    try:
        now = {
            "sqlite": "strftime('%Y-%m-%d %H:%M:%f', 'now')",
            "postgresql": "CURRENT_TIMESTAMP",
            "mysql": "UTC_TIMESTAMP(6)",
        }[dialect]
        claim_sql = (
            f"UPDATE {prefix}items SET state = 'claimed', claim_token = ?, worker_id = ?, "
            f"updated_at = {now} WHERE job = ? AND source_key = ?"
        )
        apply_sql = (
            f"UPDATE {prefix}src SET name = ?, years = ?, lastprocessed = CURRENT_TIMESTAMP "
            f"WHERE userid = ?"
        )
        keys = list(range(1, rows + 1))
        start = time.perf_counter()
        for i in range(0, rows, CHUNK):
            _begin(conn, dialect)
            conn.cursor().executemany(
                claim_sql, [("tok", "raw", job, str(k)) for k in keys[i : i + CHUNK]]
            )
            _commit(conn, dialect)
        claim_rate = rows / (time.perf_counter() - start)
        start = time.perf_counter()
        for i in range(0, rows, CHUNK):
            _begin(conn, dialect)
            conn.cursor().executemany(
                apply_sql, [(f"raw {k}", k % 40, k) for k in keys[i : i + CHUNK]]
            )
            _commit(conn, dialect)
        apply_rate = rows / (time.perf_counter() - start)
        return claim_rate, apply_rate
    finally:
        conn.close()


async def _bench(dialect: str, dsn: str, rows: int) -> tuple[float, float, float, float]:
    """Store claim and apply rows/s, then the raw limits, on fresh tables."""
    prefix = f"bench{uuid.uuid4().hex[:6]}_"
    _drop(dialect, dsn, prefix)
    _make_source(dialect, dsn, f"{prefix}src", rows)
    settings = StoreSettings(
        dsn=dsn,
        dialect=dialect,  # type: ignore[arg-type]
        pool_size=4,
        items_table=f"{prefix}items",
        batches_table=f"{prefix}batches",
        meta_table=f"{prefix}meta",
    )
    job = JobSpec(
        name="bench",
        source=SourceSpec(
            table=f"{prefix}src",
            key_column="userid",
            text_columns=("resume_text",),
            processed_column="lastprocessed",
        ),
        model="m",
        output_schema={"type": "object"},
        columns=(
            ColumnMapping(field="name", column="name"),
            ColumnMapping(field="y", column="years"),
        ),
    )
    try:
        async with await Store.open(settings) as store:
            await store.init_db()
            await store.discover(job)
            start = time.perf_counter()
            claimed = []
            while batch := await store.claim(job, "bench", CLAIM_BATCH, 600):
                claimed.extend(batch)
            claim_rate = len(claimed) / (time.perf_counter() - start)
            for i in range(0, len(claimed), 5000):
                part = claimed[i : i + 5000]
                record = BatchRecord(
                    id=uuid.uuid4().hex,
                    job=job.name,
                    state="draft",
                    model="m",
                    endpoint=job.endpoint,
                    worker_id="bench",
                )
                await store.create_draft(record, [(c.key, c.claim_token, c.key) for c in part], 600)
            results = [
                ApplyRow(c.key, c.claim_token, {"name": f"n {c.key}", "years": int(c.key) % 40})
                for c in claimed
            ]
            start = time.perf_counter()
            for i in range(0, len(results), CHUNK):
                await store.apply_results(job, results[i : i + CHUNK])
            apply_rate = len(results) / (time.perf_counter() - start)
            assert (await store.counts(job.name))["done"] == rows
        raw_claim, raw_apply = _raw(dialect, dsn, prefix, job.name, rows)
        return claim_rate, apply_rate, raw_claim, raw_apply
    finally:
        _drop(dialect, dsn, prefix)


def main() -> int:
    """Run the benchmark on each reachable database and print the ratios."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--rows", type=int, default=20_000)
    parser.add_argument("--only", default="sqlite,postgresql,mysql")
    args = parser.parse_args()
    summary = []
    with tempfile.TemporaryDirectory() as tmp:
        dsns = {"sqlite": f"Driver=SQLite3;Database={tmp}/bench.db", **DSNS}
        for dialect in [d.strip() for d in args.only.split(",") if d.strip()]:
            try:
                pyodbc.connect(dsns[dialect], timeout=3).close()
            except pyodbc.Error as exc:
                print(f"{dialect}: skipped, not reachable ({exc.args[0]})")
                continue
            claim, apply, raw_claim, raw_apply = asyncio.run(
                _bench(dialect, dsns[dialect], args.rows)
            )
            print(
                f"{dialect:10} claim {claim:9.0f} rows/s (raw {raw_claim:8.0f}, "
                f"x{claim / raw_claim:.2f})   apply {apply:8.0f} rows/s "
                f"(raw {raw_apply:8.0f}, x{apply / raw_apply:.2f})"
            )
            summary.append(
                f"{dialect} claim x{claim / raw_claim:.2f} apply x{apply / raw_apply:.2f}"
            )
    print(f"summary rows={args.rows}: " + "; ".join(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
