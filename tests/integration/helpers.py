"""Test helpers: a small source table on any live database, filled and inspected with pyodbc."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pyodbc

from engine.job import ColumnMapping, JobSpec, SourceSpec
from engine.requests import parse_custom_id

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
