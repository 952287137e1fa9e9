"""Test helpers: a small source table on any live database, filled and inspected with pyodbc."""

from __future__ import annotations

from collections.abc import Sequence
from decimal import Decimal
from typing import Any

import pyodbc

from engine.job import ColumnMapping, JobSpec, SourceSpec

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
