"""Test helpers: a small source table on any live database, the engine and store settings the
tests share, and the emulator's answers read back."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import replace
from decimal import Decimal
from pathlib import Path
from typing import Any

import pyodbc

from engine import ApiSettings, EngineSettings, StoreSettings
from engine.emulator import Emulator
from engine.job import ColumnMapping, JobSpec, SourceSpec
from engine.requests import parse_custom_id
from engine.store import Store
from tests.support import DbTarget

TYPES = {
    "sqlite": {"int": "INTEGER", "text": "TEXT", "ts": "TIMESTAMP", "short": "VARCHAR(200)"},
    "postgresql": {"int": "INTEGER", "text": "TEXT", "ts": "TIMESTAMP", "short": "VARCHAR(200)"},
    "mysql": {"int": "INT", "text": "LONGTEXT", "ts": "DATETIME(6)", "short": "VARCHAR(200)"},
}

SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "name": {"type": "string"},
        "tags": {"type": "array", "items": {"type": "string"}},
        "score": {"type": ["integer", "null"]},
    },
    "required": ["name", "tags", "score"],
    "additionalProperties": False,
}


def connect(dsn: str) -> pyodbc.Connection:
    """A plain autocommit connection for set-up and checks."""
    conn = pyodbc.connect(dsn, autocommit=True)
    if "sqlite" in dsn.lower():
        conn.setdecoding(pyodbc.SQL_CHAR, encoding="utf-8")
        conn.setencoding(encoding="utf-8")
    return conn


def connect_utf8(dsn: str) -> pyodbc.Connection:
    """Like connect, binding and reading text as UTF-8 everywhere, as the engine does.

    MariaDB's driver mangles long text bound as UTF-16 (a 300-character key arrives cut).
    """
    conn = connect(dsn)
    if "maria" in dsn.lower() or "mysql" in dsn.lower():
        conn.setencoding(encoding="utf-8")
        conn.setdecoding(pyodbc.SQL_CHAR, encoding="utf-8")
        conn.setdecoding(pyodbc.SQL_WCHAR, encoding="utf-8")
    return conn


def fetch_utf8(dsn: str, sql: str, *params: Any) -> list[tuple[Any, ...]]:
    """Like fetch, over connect_utf8."""
    conn = connect_utf8(dsn)
    try:
        return [tuple(row) for row in conn.cursor().execute(sql, *params).fetchall()]
    finally:
        conn.close()


def make_source(dialect: str, dsn: str, table: str, texts: Sequence[str | None]) -> None:
    """Create ``table`` (id, body, processed, out_name, out_tags, out_score) with rows."""
    t = TYPES[dialect]
    conn = connect(dsn)
    try:
        cur = conn.cursor()
        cur.execute(f"DROP TABLE IF EXISTS {table}")
        cur.execute(
            f"CREATE TABLE {table} (id {t['int']} PRIMARY KEY, body {t['text']}, "
            f"processed {t['ts']} NULL, out_name {t['short']} NULL, out_tags {t['text']} NULL, "
            f"out_score {t['int']} NULL)"
        )
        rows = [(i + 1, text) for i, text in enumerate(texts)]
        for start in range(0, len(rows), 500):
            cur.executemany(
                f"INSERT INTO {table} (id, body) VALUES (?, ?)", rows[start : start + 500]
            )
    finally:
        conn.close()


def make_keyed_source(
    dialect: str, dsn: str, table: str, key_sql: str, rows: Sequence[tuple[Any, str]],
    *, unique: bool = True,
) -> None:
    """Like make_source, with the key column ``id`` of type ``key_sql`` and the given keys.

    ``unique`` makes it the primary key; without it the key has no constraint at all.
    """
    t = TYPES[dialect]
    suffix = " DEFAULT CHARSET=utf8mb4" if dialect == "mysql" else ""
    conn = connect_utf8(dsn)
    try:
        cur = conn.cursor()
        cur.execute(f"DROP TABLE IF EXISTS {table}")
        cur.execute(
            f"CREATE TABLE {table} (id {key_sql} NOT NULL{' PRIMARY KEY' if unique else ''}, "
            f"body {t['text']}, processed {t['ts']} NULL, out_name {t['short']} NULL, "
            f"out_tags {t['text']} NULL, out_score {t['int']} NULL){suffix}"
        )
        for key, text in rows:
            if isinstance(key, int) and not -(2**63) <= key < 2**63:
                key = Decimal(key)  # pyodbc binds wider integers only as exact numerics
            cur.execute(f"INSERT INTO {table} (id, body) VALUES (?, ?)", key, text)
    finally:
        conn.close()


def drop(dsn: str, *tables: str) -> None:
    """Drop tables if they exist."""
    conn = connect(dsn)
    try:
        for table in tables:
            conn.cursor().execute(f"DROP TABLE IF EXISTS {table}")
    finally:
        conn.close()


def fetch(dsn: str, sql: str, *params: Any) -> list[tuple[Any, ...]]:
    """Run a query and return its rows as tuples."""
    conn = connect(dsn)
    try:
        return [tuple(row) for row in conn.cursor().execute(sql, *params).fetchall()]
    finally:
        conn.close()


def make_job(table: str, name: str = "t") -> JobSpec:
    """A small extraction job over the table make_source creates."""
    return JobSpec(
        name=name,
        source=SourceSpec(
            table=table,
            key_column="id",
            key_type="int",
            text_columns=("body",),
            processed_column="processed",
        ),
        model="gpt-4o-mini",
        system_prompt="Extract the name and tags.",
        user_template="Text: {body}",
        output_schema=SCHEMA,
        schema_name="thing",
        columns=(
            ColumnMapping(field="name", column="out_name", max_length=200),
            ColumnMapping(field="tags", column="out_tags", kind="json"),
            ColumnMapping(field="score", column="out_score", kind="int"),
        ),
    )


def emulator_answers(storage_dir: Path) -> dict[str, Any]:
    """Return, per source key, the answer the emulator gave to the key's latest attempt.

    Read from every output file in the emulator's storage: the value a done row must hold
    (an earlier attempt failed, so only the latest one can have been applied). An answer that
    is not JSON maps to None.
    """
    latest: dict[str, tuple[int, Any]] = {}
    for path in storage_dir.glob("*.jsonl"):
        for raw in path.read_bytes().splitlines():
            line = json.loads(raw)
            body = (line.get("response") or {}).get("body") or {}
            if "custom_id" not in line or "choices" not in body:
                continue  # a request line of an input file, or an error line
            _job, key, attempt = parse_custom_id(str(line["custom_id"]))
            content = body["choices"][0]["message"].get("content")
            try:
                answer = json.loads(content)
            except (TypeError, ValueError):
                answer = None
            if key not in latest or attempt > latest[key][0]:
                latest[key] = (attempt, answer)
    return {key: answer for key, (_attempt, answer) in latest.items()}


def fast_settings(tmp_path: Path, **overrides: Any) -> EngineSettings:
    """Settings with time removed: tiny poll intervals, short grace."""
    base = EngineSettings(
        batch_size=10,
        max_in_flight=3,
        min_check_interval_s=0.005,
        check_interval_s=0.05,
        lease_s=30,
        max_attempts=3,
        spool_dir=str(tmp_path / "spool"),
        shutdown_grace_period_s=5,
        token_limit_backoff_s=0.05,
    )
    return replace(base, **overrides)


def api_for(emu: Emulator) -> ApiSettings:
    return ApiSettings(api_key="sk-test-engine", base_url=emu.base_url, timeout_s=30)


async def prepared(db: DbTarget, texts: list[str | None], name: str = "t") -> tuple[Any, Any]:
    """Create the source table and the engine's tables; return (job, store settings)."""
    table = f"{db.prefix}src"
    make_source(db.dialect, db.dsn, table, texts)
    store_settings = StoreSettings(
        dsn=db.dsn,
        items_table=f"{db.prefix}items",
        batches_table=f"{db.prefix}batches",
        meta_table=f"{db.prefix}meta",
    )
    store = await Store.open(store_settings)
    try:
        await store.init_db()
    finally:
        await store.close()
    return make_job(table, name), store_settings


def cleanup(db: DbTarget) -> None:
    """Drop a test's tables on a server database (SQLite's file goes with tmp_path)."""
    if db.dialect != "sqlite":
        drop(db.dsn, f"{db.prefix}src", f"{db.prefix}items", f"{db.prefix}batches",
             f"{db.prefix}meta", f"{db.prefix}items_workers", f"{db.prefix}meta_jobs")


def settings_for(
    dialect: str, dsn: str, prefix: str, pool_size: int = 3, **overrides: Any
) -> StoreSettings:
    """Store settings with per-test table names (overrides: query_timeout_s, outage_s, ...)."""
    values: dict[str, Any] = {"query_timeout_s": 30, **overrides}
    return StoreSettings(
        dsn=dsn,
        dialect=dialect,  # type: ignore[arg-type]
        pool_size=pool_size,
        items_table=f"{prefix}items",
        batches_table=f"{prefix}batches",
        meta_table=f"{prefix}meta",
        **values,
    )


def job_for(prefix: str, name: str = "cands") -> JobSpec:
    """A job over the candidates-shaped source."""
    return JobSpec(
        name=name,
        source=SourceSpec(
            table=f"{prefix}candidates",
            key_column="userid",
            text_columns=("resume_text",),
            processed_column="LastProcessed",
        ),
        model="gpt-4o-mini",
        output_schema={"type": "object"},
        columns=(
            ColumnMapping(field="name", column="name"),
            ColumnMapping(field="years", column="years", kind="int"),
            ColumnMapping(field="score", column="score", kind="float"),
        ),
    )


def write_embedding_input(path: Path, size: int) -> str:
    """Write embedding request lines (about 4.9 kB each) up to ``size`` bytes; return SHA-256."""
    digest = hashlib.sha256()
    filler = "lorem ipsum dolor sit amet " * 180
    with path.open("wb") as fh:
        i = 0
        while fh.tell() < size:
            line = json.dumps({
                "custom_id": f"row-{i}", "method": "POST", "url": "/v1/embeddings",
                "body": {"model": "text-embedding-3-small", "input": f"{i} {filler}",
                         "dimensions": 8},
            }).encode() + b"\n"
            fh.write(line)
            digest.update(line)
            i += 1
    return digest.hexdigest()
