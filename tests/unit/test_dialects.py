"""Dialects without a server: detection, identifiers, error classes, and SQL Server's T-SQL."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import pyodbc
import pytest
import sqlglot
from sqlglot import exp

from engine.errors import ConfigError, IdentifierError, StoreError, TransientStoreError
from engine.job import ColumnMapping, JobSpec, SourceSpec
from engine.settings import StoreSettings
from engine.store import Store
from engine.store.dialects import (
    detect_dialect,
    driver_name,
    get_dialect,
    native_code,
    validate_identifier,
)


def _mssql_store() -> Store:
    return Store(
        StoreSettings(
            dsn="Driver={ODBC Driver 18 for SQL Server};Server=db;Database=x;Uid=u;Pwd=secret;",
            batches_table="aicandidateBatchStatus",
        )
    )


def _job() -> JobSpec:
    return JobSpec(
        name="resumes",
        source=SourceSpec(
            table="dbo.aicandidate",
            key_column="userid",
            text_columns=("resume_text",),
            processed_column="LastProcessed",
            extra_filter="resume_text IS NOT NULL",
        ),
        model="gpt-4o-mini",
        output_schema={"type": "object"},
        columns=(ColumnMapping(field="name", column="FullName"),),
    )


def _parse(sql: str) -> list[exp.Expression]:
    parsed = sqlglot.parse(sql, read="tsql", error_level=sqlglot.ErrorLevel.RAISE)
    assert parsed
    assert all(p is not None for p in parsed)
    assert not any(isinstance(p, exp.Command) for p in parsed), sql  # really understood
    return [p for p in parsed if p is not None]


@pytest.mark.parametrize(
    ("dsn", "dialect"),
    [
        ("Driver={ODBC Driver 18 for SQL Server};Server=h;Encrypt=yes", "mssql"),
        ("Driver={ODBC Driver 17 for SQL Server};Server=h", "mssql"),
        ("DRIVER=FreeTDS;Server=h;Port=1433;TDS_Version=7.4", "mssql"),
        ("Driver={PostgreSQL Unicode};Server=127.0.0.1", "postgresql"),
        ("Driver={PostgreSQL ANSI};Server=127.0.0.1", "postgresql"),
        ("Driver={MariaDB Unicode};Server=127.0.0.1", "mysql"),
        ("Driver={MySQL ODBC 8.0 Unicode Driver};Server=127.0.0.1", "mysql"),
        ("Driver=SQLite3;Database=/tmp/x.db", "sqlite"),
    ],
)
def test_detect_dialect(dsn: str, dialect: str) -> None:
    assert detect_dialect(dsn) == dialect


@pytest.mark.parametrize(
    ("dsn", "driver"),
    [
        ("Driver={ODBC Driver 18 for SQL Server};Server=db;Pwd=x", "ODBC Driver 18 for SQL Server"),
        ("Server=db; driver = MariaDB Unicode ;Port=3306", "MariaDB Unicode"),
        ("DSN=prod;Uid=u;Pwd=secret", None),
        ("Database=drivers.db;Driver=SQLite3", "SQLite3"),
    ],
)
def test_driver_name(dsn: str, driver: str | None) -> None:
    assert driver_name(dsn) == driver


def test_detect_dialect_needs_driver() -> None:
    with pytest.raises(ConfigError, match="dialect"):
        detect_dialect("DSN=prod;Uid=u;Pwd=secret")
    with pytest.raises(ConfigError, match="dialect") as info:
        detect_dialect("Driver={Oracle};Pwd=secret")
    assert "secret" not in str(info.value)


@pytest.mark.parametrize("bad", ['a"b', "a b", "a;b", "a]b", "a`b", "", "1a", "a.b.c", "a-b"])
def test_identifiers_rejected(bad: str) -> None:
    with pytest.raises(IdentifierError, match=r"source\.table"):
        validate_identifier(bad, "source.table", qualified=True)


def test_identifiers_quoted_per_dialect() -> None:
    assert get_dialect("postgresql").table("public.items", "t") == '"public"."items"'
    assert get_dialect("mysql").table("items", "t") == "`items`"
    assert get_dialect("mssql").table("dbo.aicandidate", "t") == "[dbo].[aicandidate]"
    with pytest.raises(IdentifierError, match="columns"):
        get_dialect("mssql").quote("a.b", "columns")


def test_bad_column_names_rejected_with_setting() -> None:
    store = _mssql_store()
    job = JobSpec(
        name="j",
        source=SourceSpec(
            table="t", key_column="id; DROP TABLE t", text_columns=("a",), processed_column="p"
        ),
        model="m",
        output_schema={"type": "object"},
    )
    with pytest.raises(IdentifierError, match=r"source\.key_column"):
        store.sql_discover(job, None)


@pytest.mark.parametrize(
    ("dialect", "state", "message", "transient"),
    [
        ("postgresql", "40P01", "[40P01] ERROR: deadlock detected (1) (SQLExecDirectW)", True),
        ("postgresql", "40001", "[40001] ERROR: could not serialize (1) (SQLExecDirectW)", True),
        ("postgresql", "08006", "[08006] connection lost (1) (SQLExecDirectW)", True),
        ("postgresql", "23505", "[23505] duplicate key (1) (SQLExecDirectW)", False),
        ("mysql", "40001", "[40001] [ma-3.1.15]Deadlock found (1213) (SQLExecDirectW)", True),
        (
            "mysql",
            "HY000",
            "[HY000] [ma-3.1.15]Lock wait timeout exceeded (1205) (SQLExecDirectW)",
            True,
        ),
        ("mysql", "HY000", "[HY000] [ma-3.1.15]Server has gone away (2006) (SQLExecDirectW)", True),
        ("mysql", "42S02", "[42S02] [ma-3.1.15]Table doesn't exist (1146) (SQLExecDirectW)", False),
        ("sqlite", "HY000", "[HY000] [SQLite]database is locked (5) (5) (SQLExecDirectW)", True),
        (
            "sqlite",
            "HY000",
            '[HY000] [SQLite]near "x": syntax error (1) (1) (SQLExecDirectW)',
            False,
        ),
        (
            "mssql",
            "40001",
            "[40001] [Microsoft][ODBC Driver 18 for SQL Server][SQL Server]"
            "Transaction (Process ID 52) was deadlocked (1205) (SQLExecDirectW)",
            True,
        ),
        (
            "mssql",
            "HY000",
            "[HY000] [FreeTDS][SQL Server]Lock request time out period "
            "exceeded. (1222) (SQLExecDirectW)",
            True,
        ),
        ("mssql", "HYT00", "[HYT00] [Microsoft]Query timeout expired (0) (SQLExecDirectW)", True),
        (
            "mysql",
            "HY018",
            "[HY018] [ma-3.1.15][10.11.19-MariaDB]Query execution was interrupted "
            "(max_statement_time exceeded) (1969) (SQLExecDirectW)",
            True,
        ),
        (
            "postgresql",
            "57014",
            "[57014] ERROR: canceling statement due to statement timeout;\n"
            "Error while executing the query (1) (SQLExecDirectW)",
            True,
        ),
        (
            "mysql",
            "HY000",
            "[HY000] [ma-3.1.15]Table 'test.nope' doesn't exist (1146) (SQLExecDirectW)",
            False,
        ),
        ("mssql", "08S01", "[08S01] Communication link failure (10054) (SQLExecDirectW)", True),
        ("mssql", "42000", "[42000] Incorrect syntax (102) (SQLExecDirectW)", False),
    ],
)
def test_error_classification(dialect: str, state: str, message: str, transient: bool) -> None:
    err = get_dialect(dialect).classify(pyodbc.Error(state, message))
    assert isinstance(err, StoreError)
    assert isinstance(err, TransientStoreError) is transient


def test_native_code_parsed_from_message() -> None:
    assert native_code("[HY000] Lock wait timeout (1205) (SQLExecDirectW)") == 1205
    assert native_code("no code here") is None


def test_mssql_claim_uses_readpast_updlock_and_parses() -> None:
    sql = _mssql_store().sql_claim(100)
    statements = _parse(sql)
    assert isinstance(statements[-1], exp.Update)
    assert "SET NOCOUNT ON" in sql
    assert "READPAST" in sql
    assert "UPDLOCK" in sql
    assert "ROWLOCK" in sql
    assert "TOP (100)" in sql
    assert "OUTPUT inserted.[source_key]" in sql


def test_mssql_discover_apply_and_lock_sql_parse() -> None:
    store, job = _mssql_store(), _job()
    discover = store.sql_discover(job, 1000)
    assert isinstance(_parse(discover)[0], exp.Insert)
    assert "[dbo].[aicandidate]" in discover
    assert "UPDLOCK, HOLDLOCK" in discover
    assert "TOP (1000)" in discover
    assert "(resume_text IS NOT NULL)" in discover
    apply = store.sql_apply_source(job, ["FullName"])
    assert isinstance(_parse(apply)[0], exp.Update)
    assert "[LastProcessed] = CURRENT_TIMESTAMP" in apply
    for sql in (
        store.sql_lock_items(3),
        store.sql_items_done(3),
        store.sql_meta_insert(),
    ):
        _parse(sql)
    assert "UPDLOCK" in store.sql_lock_items(3)


def test_mssql_ddl_parses_and_keeps_configured_batches_name() -> None:
    statements = _mssql_store().sql_ddl()
    assert any("[aicandidateBatchStatus]" in s for s in statements)
    for sql in statements:
        _parse(sql)
    assert any("NVARCHAR(MAX)" in s for s in statements)
    assert any("DATETIME2(6)" in s for s in statements)


@pytest.mark.parametrize("dialect", ["postgresql", "mysql", "sqlite"])
def test_other_dialects_generate_sql(dialect: str) -> None:
    store = Store(StoreSettings(dsn="Driver=X", dialect=dialect))  # type: ignore[arg-type]
    read = {"postgresql": "postgres", "mysql": "mysql", "sqlite": "sqlite"}[dialect]
    for sql in [*store.sql_ddl(), store.sql_discover(_job(), 10)]:
        assert sqlglot.parse(sql, read=read, error_level=sqlglot.ErrorLevel.RAISE)


def test_settings_repr_hides_password() -> None:
    assert "secret" not in repr(_mssql_store().settings)


class _RecordingConnection:
    """Stands in for a pooled connection: records each statement, answers nothing."""

    def __init__(self, seen: list[str]) -> None:
        self.seen = seen

    async def execute(self, sql: str, params: object = None) -> int:
        self.seen.append(sql)
        return 0

    async def fetchall(self, sql: str, params: object = None) -> list[tuple[object, ...]]:
        self.seen.append(sql)
        return []


class _RecordingPool:
    """Hands out recording connections for transactions and reads alike."""

    def __init__(self) -> None:
        self.seen: list[str] = []

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[_RecordingConnection]:
        yield _RecordingConnection(self.seen)

    acquire = transaction


async def test_mssql_heartbeat_and_dead_worker_sql_parse() -> None:
    """SQL Server cannot run here: the heartbeat, the dead-worker sweep and the until-idle
    holdings query are parsed as T-SQL, on the same code path as the other dialects."""
    store, job = _mssql_store(), _job()
    pool = _RecordingPool()
    store._pool = pool  # type: ignore[assignment]
    await store.heartbeat(job, "w1", 30.0)
    await store.expire_dead_workers(job, "w1", ["draft", "submitted"])
    await store.held_elsewhere(job, "w1", ["draft", "submitted"])
    await store.forget_worker("w1")
    kinds = [type(_parse(sql)[0]) for sql in pool.seen]
    # the heartbeat UPDATE found no row, so the NOT EXISTS insert follows it
    assert kinds[:2] == [exp.Update, exp.Insert]
    assert "UPDLOCK, HOLDLOCK" in pool.seen[1]
    assert kinds[2:5] == [exp.Update, exp.Update, exp.Delete]
    assert all("SYSUTCDATETIME()" in sql for sql in pool.seen[:5])
    assert kinds[5:7] == [exp.Select, exp.Select]
    assert kinds[-1] is exp.Delete
    assert len(pool.seen) == 8
