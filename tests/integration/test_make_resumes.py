"""make_resumes: creates the candidates table per dialect and fills it deterministically."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyodbc
import pytest
import sqlglot

from engine.errors import ConfigError, IdentifierError
from engine.jobfile import load_job
from engine.resumes_data import (
    fill_database,
    make_resume,
    table_ddl,
)
from engine.store.dialects import detect_dialect
from tests.support import DbTarget

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "make_resumes.py"
OUTPUT_COLUMNS = [c.column for c in load_job("resumes").spec.columns]


def quote(dialect: str, name: str) -> str:
    if dialect == "mysql":
        return f"`{name}`"
    return f'"{name}"'


def connect(db: DbTarget) -> Any:
    conn = pyodbc.connect(db.dsn)
    if db.dialect == "mysql":
        conn.setdecoding(pyodbc.SQL_CHAR, encoding="utf-8")
        conn.setdecoding(pyodbc.SQL_WCHAR, encoding="utf-8")
        conn.setencoding(encoding="utf-8")
    return conn


@pytest.fixture
def tables(db: DbTarget) -> Iterator[list[str]]:
    """Names of the tables a test creates; dropped afterwards on every dialect."""
    created: list[str] = []
    yield created
    conn = connect(db)
    try:
        cursor = conn.cursor()
        for name in created:
            for table in (name, f"{name}_truth"):
                cursor.execute(f"DROP TABLE IF EXISTS {quote(db.dialect, table)}")
        conn.commit()
    finally:
        conn.close()


def rows_of(db: DbTarget, table: str) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
    conn = connect(db)
    try:
        cursor = conn.cursor()
        q = quote(db.dialect, table)
        main = cursor.execute(
            f"SELECT userid, resume_text, {quote(db.dialect, 'LastProcessed')} FROM {q} "
            "ORDER BY userid"
        ).fetchall()
        truth = cursor.execute(
            f"SELECT userid, truth_json FROM {quote(db.dialect, table + '_truth')} ORDER BY userid"
        ).fetchall()
        return [tuple(r) for r in main], [tuple(r) for r in truth]
    finally:
        conn.close()


def test_creates_and_fills_deterministically(db: DbTarget, tables: list[str]) -> None:
    first, second = f"{db.prefix}cand_a", f"{db.prefix}cand_b"
    tables += [first, second]
    result = fill_database(db.dsn, 60, seed=42, table=first, chunk_rows=25)
    assert (result.dialect, result.rows, result.first_id, result.last_id) == (db.dialect, 60, 1, 60)
    fill_database(db.dsn, 60, seed=42, table=second, chunk_rows=60)
    main_a, truth_a = rows_of(db, first)
    main_b, truth_b = rows_of(db, second)
    assert len(main_a) == 60
    assert main_a == main_b
    assert truth_a == truth_b
    # byte-exact round trip of the generated text (emoji, CJK, RTL, CRLF) and the truth
    for (userid, text, processed), (_, truth) in zip(main_a, truth_a, strict=True):
        expected = make_resume(userid, 42)
        assert text == expected.text
        assert processed is None
        assert json.loads(truth) == expected.truth

    conn = connect(db)
    try:
        cursor = conn.cursor()
        columns = ", ".join(quote(db.dialect, c) for c in OUTPUT_COLUMNS)
        values = cursor.execute(f"SELECT {columns} FROM {quote(db.dialect, first)}").fetchall()
        assert all(v is None for row in values for v in row)  # every output column, all empty
    finally:
        conn.close()


def test_appends_after_the_largest_userid_and_replace_starts_over(
    db: DbTarget, tables: list[str]
) -> None:
    table = f"{db.prefix}cand_c"
    tables.append(table)
    fill_database(db.dsn, 10, seed=1, table=table)
    again = fill_database(db.dsn, 5, seed=1, table=table)
    assert (again.first_id, again.last_id) == (11, 15)
    assert len(rows_of(db, table)[0]) == 15
    replaced = fill_database(db.dsn, 3, seed=1, table=table, replace=True)
    assert replaced.first_id == 1
    main, truth = rows_of(db, table)
    assert [r[0] for r in main] == [1, 2, 3] == [r[0] for r in truth]


def run_script(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("ENGINE_DSN", None)
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args], capture_output=True, text=True, env=env,
        timeout=100, check=False,
    )


def test_script_help_and_usage_errors() -> None:
    helped = run_script("--help")
    assert helped.returncode == 0
    for word in ("--rows", "--db", "--dsn", "--seed", "--table", "candidates_truth"):
        assert word in helped.stdout.replace("<table>_truth", "candidates_truth")
    assert run_script("--rows", "5").returncode == 2  # no database
    assert run_script("--db", "x.db").returncode == 2  # no --rows
    bad = run_script("--rows", "5", "--dsn", "Driver=Nope;PWD=hunter2")
    assert bad.returncode == 2
    assert "hunter2" not in bad.stderr + bad.stdout


def test_script_on_sqlite_is_deterministic(tmp_path: Path) -> None:
    # How long filling takes is scripts/bench_parts.py's "resumes" figure, against a baseline.
    one, two, other = tmp_path / "one.db", tmp_path / "two.db", tmp_path / "other.db"
    done = run_script("--rows", "1000", "--db", str(one), "--seed", "9")
    assert done.returncode == 0, done.stderr
    assert run_script("--rows", "300", "--db", str(two), "--seed", "9").returncode == 0
    assert run_script("--rows", "300", "--db", str(other), "--seed", "10").returncode == 0

    def dump(path: Path, limit: int) -> list[tuple[Any, ...]]:
        conn = pyodbc.connect(f"Driver=SQLite3;Database={path}")
        try:
            return [
                tuple(r) for r in conn.cursor().execute(
                    "SELECT c.userid, c.resume_text, t.truth_json FROM candidates c "
                    "JOIN candidates_truth t ON t.userid = c.userid WHERE c.userid <= ? "
                    "ORDER BY c.userid", limit,
                ).fetchall()
            ]
        finally:
            conn.close()

    assert dump(one, 300) == dump(two, 300)
    assert len(dump(one, 1000)) == 1000
    assert dump(one, 300) != dump(other, 300)


@pytest.mark.parametrize(
    ("dsn", "dialect"),
    [
        ("Driver=SQLite3;Database=x.db", "sqlite"),
        ("Driver={PostgreSQL Unicode};Server=h", "postgresql"),
        ("DRIVER={MariaDB Unicode};Server=h", "mysql"),
        ("Driver={MySQL ODBC 8.0 Unicode Driver};Server=h", "mysql"),
        ("Driver={ODBC Driver 18 for SQL Server};Server=h,1433;Encrypt=yes", "mssql"),
        ("Driver=FreeTDS;Server=h;Port=1433;TDS_Version=7.4", "mssql"),
    ],
)
def test_dialect_is_detected_like_the_store_does(dsn: str, dialect: str) -> None:
    assert detect_dialect(dsn) == dialect


def test_unknown_driver_and_bad_table_name() -> None:
    with pytest.raises(ConfigError, match="cannot tell the database"):
        fill_database("Driver=Oracle;Pwd=x", 1)
    with pytest.raises(IdentifierError):
        fill_database("Driver=SQLite3;Database=:memory:", 1, table="x; DROP TABLE y")


def test_sql_server_ddl_parses_as_tsql() -> None:
    statements = table_ddl(load_job("resumes").spec, "mssql", "dbo.aicandidate")
    assert len(statements) == 2
    assert "NVARCHAR(MAX)" in statements[0]
    assert "[LastProcessed] DATETIME2 NULL" in statements[0]
    assert "[FullName] NVARCHAR(200)" in statements[0]
    assert statements[0].startswith("IF OBJECT_ID(N'dbo.aicandidate', N'U') IS NULL")
    for statement in statements:
        create = statement.split("\n", 1)[1]
        parsed = sqlglot.parse_one(create, read="tsql")
        assert parsed.find(sqlglot.exp.Create) is not None
    mysql = table_ddl(load_job("resumes").spec, "mysql")[0]
    assert "LONGTEXT" in mysql
    assert "utf8mb4" in mysql
