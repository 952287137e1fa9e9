"""SQL dialects: detection, identifier quoting, clock expressions, DDL types, error classes.

One class per database. Everything that differs between SQL Server, PostgreSQL,
MariaDB/MySQL and SQLite lives here, so the store's operations read the same for all four.
Values are always bound parameters; identifiers come from configuration and are validated
(``^[A-Za-z_][A-Za-z0-9_]*$`` per part) before they are quoted.
"""

from __future__ import annotations

import re
from typing import Any, ClassVar

from engine.errors import (
    ConfigError,
    DataFitError,
    IdentifierError,
    StoreError,
    TransientStoreError,
)

__all__ = [
    "Dialect",
    "MssqlDialect",
    "MysqlDialect",
    "PostgresDialect",
    "SqliteDialect",
    "detect_dialect",
    "driver_name",
    "get_dialect",
    "validate_identifier",
]

_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_DRIVER = re.compile(r"(?i)(?:^|;)\s*driver\s*=\s*(\{[^}]*\}|[^;]*)")
# pyodbc puts the driver's native code only inside the message: "... text (1213) (SQLExecDirectW)"
_NATIVE = re.compile(r"\((-?\d+)\)\s*\(SQL\w+\)\s*$")


def validate_identifier(value: str, setting: str, *, qualified: bool = False) -> list[str]:
    """Split and check an identifier from configuration; IdentifierError names the setting."""
    parts = value.split(".") if qualified else [value]
    if not value or len(parts) > 2 or not all(_IDENT.match(p) for p in parts):
        allowed = "name or schema.name" if qualified else "name"
        raise IdentifierError(
            f"{setting}: {value!r} is not a plain {allowed} (letters, digits, '_'; "
            "no quotes, spaces or semicolons)"
        )
    return parts


def native_code(message: str) -> int | None:
    """Return the driver's native error code that pyodbc left in the message text, if any."""
    match = _NATIVE.search(message.strip())
    return int(match.group(1)) if match else None


class Dialect:
    """What differs between databases; subclasses fill the class attributes and hooks."""

    name: ClassVar[str] = ""
    open_quote: ClassVar[str] = '"'
    close_quote: ClassVar[str] = '"'
    autocommit: ClassVar[bool] = False  # SQLite needs it on so BEGIN IMMEDIATE is ours
    begin_sql: ClassVar[str | None] = None  # explicit BEGIN when autocommit is on
    now: ClassVar[str] = "CURRENT_TIMESTAMP"  # the database clock, UTC, for engine tables
    t_key: ClassVar[str] = "VARCHAR(255)"
    # Appended to the type of items.source_key: how the engine compares keys (exactly).
    key_collation: ClassVar[str] = ""
    t_text: ClassVar[str] = "TEXT"
    t_ts: ClassVar[str] = "TIMESTAMP"
    t_int: ClassVar[str] = "BIGINT"
    t_float: ClassVar[str] = "DOUBLE PRECISION"
    table_suffix: ClassVar[str] = ""
    lock_suffix: ClassVar[str] = " FOR UPDATE"  # locking read of rows about to be updated
    skip_locked_suffix: ClassVar[str] = " FOR UPDATE SKIP LOCKED"
    lock_hint: ClassVar[str] = ""  # SQL Server table hint for the same
    skip_locked_hint: ClassVar[str] = ""
    utf8_everywhere: ClassVar[bool] = False  # pyodbc setencoding/setdecoding to UTF-8
    transient_states: ClassVar[frozenset[str]] = frozenset({"40001", "HYT00", "HYT01"})
    transient_codes: ClassVar[frozenset[int]] = frozenset()
    # Lower-case message fragments of a lost connection, for drivers that report it as the
    # generic HY000 with no telling native code (psqlODBC, MariaDB's client library).
    lost_connection_texts: ClassVar[tuple[str, ...]] = ()
    data_codes: ClassVar[frozenset[int]] = frozenset()  # native codes of a value misfit
    max_params: ClassVar[int] = 30000

    # -- identifiers ---------------------------------------------------------------------------

    def quote(self, name: str, setting: str) -> str:
        """Validate and quote one column name."""
        validate_identifier(name, setting)
        return f"{self.open_quote}{name}{self.close_quote}"

    def table(self, name: str, setting: str) -> str:
        """Validate and quote a table name, optionally schema-qualified."""
        parts = validate_identifier(name, setting, qualified=True)
        return ".".join(f"{self.open_quote}{p}{self.close_quote}" for p in parts)

    # -- expressions ---------------------------------------------------------------------------

    def lease_expr(self) -> str:
        """Return SQL for 'database now + ? seconds' with one bound parameter (see lease_param)."""
        raise NotImplementedError

    def lease_param(self, lease_s: float) -> Any:
        """Return the bound value that goes with lease_expr()."""
        return float(lease_s)

    def as_text(self, expr: str) -> str:
        """Cast a source key expression to the text stored in items.source_key."""
        return f"CAST({expr} AS VARCHAR(255))"

    def char_length(self, expr: str) -> str:
        """Return SQL for the length in characters of a key as text (trailing spaces count)."""
        return f"LENGTH(CAST({expr} AS TEXT))"

    def limit(self, select_body: str, n: int) -> str:
        """Append a row limit to a SELECT (n is an int we formatted, never text from outside)."""
        return f"{select_body} LIMIT {int(n)}"

    def top(self, n: int) -> str:
        """Return the SELECT TOP clause (SQL Server only)."""
        return ""

    # -- DDL -----------------------------------------------------------------------------------

    def create_table(self, table: str, body: str) -> str:
        """CREATE TABLE when absent."""
        return f"CREATE TABLE IF NOT EXISTS {table} ({body}){self.table_suffix}"

    def create_index(self, name: str, table: str, columns: str) -> str | None:
        """CREATE INDEX when absent (None when the index is declared inside CREATE TABLE)."""
        return f"CREATE INDEX IF NOT EXISTS {name} ON {table} ({columns})"

    def inline_index(self, name: str, columns: str) -> str | None:
        """Return an index clause for CREATE TABLE (MySQL lacks CREATE INDEX IF NOT EXISTS)."""
        return None

    def insert_ignore(self, table: str, columns: str, select: str, conflict: str) -> str:
        """INSERT ... SELECT that skips rows whose primary key already exists."""
        return f"INSERT INTO {table} ({columns}) {select} ON CONFLICT ({conflict}) DO NOTHING"

    def lock_ddl(self) -> str | None:
        """Return a statement that serialises concurrent init_db runs in their transaction."""
        return None

    def session_sql(self, query_timeout_s: int) -> list[str]:
        """Statements run once on each new connection."""
        return []

    def prepare_dsn(self, dsn: str, query_timeout_s: int) -> str:
        """Return the DSN with attributes this dialect needs added."""
        return dsn

    def zone_sql(self) -> list[str]:
        """Statements that put each new session in UTC (none where the clock is always UTC).

        The engine's own tables use ``now``, UTC in any session zone; this makes the source
        table's ``CURRENT_TIMESTAMP`` (the processed column) UTC too, whatever zone the
        server, the role or the client environment (PGTZ, an init statement) chose.
        """
        return []

    # -- errors --------------------------------------------------------------------------------

    def is_transient(self, sqlstate: str, code: int | None, message: str) -> bool:
        """Whether retrying the whole transaction may succeed."""
        if sqlstate.startswith("08"):  # connection lost or refused
            return True
        if sqlstate in self.transient_states or (
            code is not None and code in self.transient_codes
        ):
            return True
        if sqlstate in ("HY000", ""):  # generic: only the message tells a lost connection
            lowered = message.lower()
            return any(text in lowered for text in self.lost_connection_texts)
        return False

    def is_data_misfit(self, sqlstate: str, code: int | None, message: str) -> bool:
        """Whether a value did not fit its column (class 22: too long, out of range, type)."""
        return sqlstate.startswith("22") or (code is not None and code in self.data_codes)

    def classify(self, exc: BaseException) -> StoreError:
        """Map a pyodbc error to TransientStoreError or StoreError (message without secrets)."""
        args: tuple[Any, ...] = tuple(getattr(exc, "args", ()))
        sqlstate = str(args[0]) if len(args) >= 2 else ""
        message = str(args[1]) if len(args) >= 2 else str(exc)
        code = native_code(message)
        text = f"{self.name} [{sqlstate or '?'}] {message.strip()}"
        if self.is_transient(sqlstate, code, message):
            return TransientStoreError(text)
        if self.is_data_misfit(sqlstate, code, message):
            return DataFitError(text)
        return StoreError(text)


class PostgresDialect(Dialect):
    """PostgreSQL through psqlODBC: SKIP LOCKED claims, SQLSTATE passed through."""

    name = "postgresql"
    now = "(CURRENT_TIMESTAMP AT TIME ZONE 'UTC')"
    t_ts = "TIMESTAMP(6)"
    # 57P01 admin shutdown (pg_terminate_backend), 57P02 crash shutdown, 57P03 starting up,
    # 57014 statement_timeout (a query stuck behind locks under load; our own SQLCancel never
    # reaches classification, it surfaces as CancelledError)
    transient_states = frozenset(
        {"40001", "40P01", "55P03", "57014", "57P01", "57P02", "57P03", "HYT00"}
    )
    # psqlODBC reports a killed or dropped connection as HY000 on the next statement.
    lost_connection_texts = (
        "the connection has been lost",
        "server closed the connection unexpectedly",
        "could not connect to server",
        "connection refused",
        "terminating connection due to administrator command",
        "could not send data to server",
        "could not receive data from server",
        "no connection to the server",
        "the database system is shutting down",
        "the database system is starting up",
        "connection not open",
        "ssl syscall error",
        # psqlODBC's own per-statement SAVEPOINT, sent first on a connection already dead
        "internal savepoint failed",
    )

    def lease_expr(self) -> str:
        """Now plus ? seconds (fractions kept)."""
        return f"({self.now} + CAST(? AS DOUBLE PRECISION) * INTERVAL '1 second')"

    def as_text(self, expr: str) -> str:
        """Keys are compared as text."""
        return f"CAST({expr} AS TEXT)"

    def zone_sql(self) -> list[str]:
        """Put the session in UTC (its zone may come from the server, the role or PGTZ)."""
        return ["SET TIME ZONE 'UTC'"]

    def lock_ddl(self) -> str:
        """Concurrent CREATE TABLE IF NOT EXISTS can still collide in pg_type; serialise it."""
        return "SELECT pg_advisory_xact_lock(727274001)"

    def session_sql(self, query_timeout_s: int) -> list[str]:
        """PsqlODBC ignores the ODBC query timeout, so the server enforces it."""
        return [f"SET statement_timeout = {int(query_timeout_s) * 1000}"]


class MysqlDialect(Dialect):
    """MariaDB >= 10.6 / MySQL 8: SKIP LOCKED, UTF-8 binding, native codes in the message."""

    name = "mysql"
    open_quote = close_quote = "`"
    now = "UTC_TIMESTAMP(6)"
    t_ts = "DATETIME(6)"
    t_float = "DOUBLE"
    table_suffix = " ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin"
    key_collation = " CHARACTER SET utf8mb4 COLLATE utf8mb4_nopad_bin"
    # MariaDB's driver fails on SQLPutData of long UTF-16 text; UTF-8 binds round-trip exactly.
    utf8_everywhere = True
    transient_states = frozenset({"40001", "HYT00", "08S01"})
    # 1213 deadlock, 1205 lock wait timeout, 2002/2003 can't connect (socket / host),
    # 2006/2013/2055 server gone / lost connection, 1927 connection killed, 1053 shutdown,
    # 1969 (MariaDB) / 3024 (MySQL) max_statement_time exceeded: the statement is aborted and
    # the pool drops the connection, so the whole transaction can run again
    transient_codes = frozenset(
        {1053, 1205, 1213, 1927, 1969, 2002, 2003, 2006, 2013, 2055, 3024}
    )
    lost_connection_texts = (
        "can't connect to",
        "server has gone away",
        "lost connection to",
        "connection was killed",
        "server shutdown in progress",
    )
    # 1406 data too long, 1264 out of range, 1366 incorrect value, 1265 data truncated,
    # 1292 incorrect datetime (strict mode makes each an error, not a warning)
    data_codes = frozenset({1264, 1265, 1292, 1366, 1406})
    max_params = 30000

    def lease_expr(self) -> str:
        """Now plus ? microseconds (an integer: INTERVAL ? SECOND would round)."""
        return f"({self.now} + INTERVAL ? MICROSECOND)"

    def lease_param(self, lease_s: float) -> Any:
        """Microseconds."""
        return round(lease_s * 1_000_000)

    def as_text(self, expr: str) -> str:
        """Keys are compared as binary NO PAD text, like items.source_key.

        utf8mb4_bin is PAD SPACE ('pad' = 'pad '): two source rows would be one item.
        """
        return f"CAST({expr} AS CHAR(255) CHARACTER SET utf8mb4) COLLATE utf8mb4_nopad_bin"

    def char_length(self, expr: str) -> str:
        """CHAR_LENGTH of the key as utf8mb4 text (no length cap on the cast)."""
        return f"CHAR_LENGTH(CAST({expr} AS CHAR CHARACTER SET utf8mb4))"

    def zone_sql(self) -> list[str]:
        """Put the session's time_zone in UTC (CURRENT_TIMESTAMP and NOW() follow it)."""
        return ["SET time_zone = '+00:00'"]

    def create_index(self, name: str, table: str, columns: str) -> str | None:
        """Return None: MySQL indexes are declared inline."""
        return None

    def inline_index(self, name: str, columns: str) -> str | None:
        """INDEX clause inside CREATE TABLE."""
        return f"INDEX {name} ({columns})"

    def insert_ignore(self, table: str, columns: str, select: str, conflict: str) -> str:
        """INSERT IGNORE skips duplicate keys."""
        return f"INSERT IGNORE INTO {table} ({columns}) {select}"

    def session_sql(self, query_timeout_s: int) -> list[str]:
        """READ COMMITTED avoids gap locks on claim/discover; the server enforces the timeout.

        Strict mode whatever the server's default: without it a value that does not fit its
        column is cut or zeroed with a warning (Connector/ODBC: SQLSTATE 01000, which pyodbc
        does not raise), so a result could be counted done although it was never written.
        """
        return [
            "SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED",
            f"SET SESSION max_statement_time = {int(query_timeout_s)}",
            "SET SESSION sql_mode = CONCAT_WS(',', NULLIF(@@SESSION.sql_mode, ''), "
            "'STRICT_TRANS_TABLES', 'STRICT_ALL_TABLES')",
        ]


class SqliteDialect(Dialect):
    """SQLite through the SQLite3 ODBC driver: one writer at a time via BEGIN IMMEDIATE."""

    name = "sqlite"
    autocommit = True
    begin_sql = "BEGIN IMMEDIATE"
    now = "strftime('%Y-%m-%d %H:%M:%f', 'now')"
    t_key = t_text = t_ts = "TEXT"
    t_int = "INTEGER"
    t_float = "REAL"
    lock_suffix = skip_locked_suffix = ""  # BEGIN IMMEDIATE already holds the write lock
    max_params = 900

    def lease_expr(self) -> str:
        """Now plus a '+N seconds' modifier."""
        return "strftime('%Y-%m-%d %H:%M:%f', 'now', ?)"

    def lease_param(self, lease_s: float) -> Any:
        """Return the strftime modifier."""
        return f"{float(lease_s):+.3f} seconds"

    def as_text(self, expr: str) -> str:
        """Keys are compared as text."""
        return f"CAST({expr} AS TEXT)"

    def insert_ignore(self, table: str, columns: str, select: str, conflict: str) -> str:
        """INSERT OR IGNORE skips duplicate keys."""
        return f"INSERT OR IGNORE INTO {table} ({columns}) {select}"

    def is_transient(self, sqlstate: str, code: int | None, message: str) -> bool:
        """Every SQLite error is HY000; busy/locked are told apart by the message."""
        lowered = message.lower()
        return (
            "database is locked" in lowered
            or "database is busy" in lowered
            or "database table is locked" in lowered
            or code in {5, 6}  # SQLITE_BUSY, SQLITE_LOCKED
            or super().is_transient(sqlstate, None, message)
        )

    def is_data_misfit(self, sqlstate: str, code: int | None, message: str) -> bool:
        """STRICT tables refuse a wrong type, and any value can exceed SQLITE_MAX_LENGTH."""
        lowered = message.lower()
        return (
            "cannot store" in lowered  # "cannot store TEXT value in INTEGER column t.c"
            or "string or blob too big" in lowered
            or super().is_data_misfit(sqlstate, code, message)
        )

    def prepare_dsn(self, dsn: str, query_timeout_s: int) -> str:
        """Give the driver a busy timeout (ms) so BEGIN IMMEDIATE waits for the writer."""
        if re.search(r"(^|;)\s*timeout\s*=", dsn, re.IGNORECASE):
            return dsn
        timeout_ms = (query_timeout_s or 60) * 1000
        return f"{dsn.rstrip(';')};Timeout={timeout_ms}"


class MssqlDialect(Dialect):
    """SQL Server (Microsoft ODBC Driver 17/18 or FreeTDS): READPAST claims, OUTPUT clauses."""

    name = "mssql"
    open_quote, close_quote = "[", "]"
    now = "SYSUTCDATETIME()"
    t_key = "NVARCHAR(255)"
    t_text = "NVARCHAR(MAX)"
    t_ts = "DATETIME2(6)"
    t_float = "FLOAT"
    lock_suffix = skip_locked_suffix = ""
    lock_hint = " WITH (UPDLOCK, ROWLOCK)"
    skip_locked_hint = " WITH (ROWLOCK, READPAST, UPDLOCK)"
    transient_states = frozenset({"40001", "HYT00"})
    # 1205 deadlock victim, 1222 lock request timeout
    transient_codes = frozenset({1205, 1222})
    # 8152/2628 string or binary data would be truncated, 8115 arithmetic overflow
    data_codes = frozenset({2628, 8115, 8152})
    max_params = 2000

    def lease_expr(self) -> str:
        """Now plus ? milliseconds (DATEADD takes an int)."""
        return f"DATEADD(millisecond, ?, {self.now})"

    def lease_param(self, lease_s: float) -> Any:
        """Milliseconds, kept inside int32."""
        return min(round(lease_s * 1000), 2_147_483_647)

    def as_text(self, expr: str) -> str:
        """Keys are compared as nvarchar."""
        return f"CAST({expr} AS NVARCHAR(255))"

    def char_length(self, expr: str) -> str:
        """LEN ignores trailing spaces; a sentinel character keeps them."""
        return f"(LEN(CAST({expr} AS NVARCHAR(MAX)) + N'x') - 1)"

    def limit(self, select_body: str, n: int) -> str:
        """Return the body unchanged: SQL Server limits with TOP (see top())."""
        return select_body

    def top(self, n: int) -> str:
        """TOP (n) after SELECT."""
        return f"TOP ({int(n)}) "

    def create_table(self, table: str, body: str) -> str:
        """Guarded by OBJECT_ID."""
        bare = table.replace("[", "").replace("]", "")
        return f"IF OBJECT_ID(N'{bare}', N'U') IS NULL CREATE TABLE {table} ({body})"

    def create_index(self, name: str, table: str, columns: str) -> str | None:
        """Guarded by sys.indexes."""
        bare = table.replace("[", "").replace("]", "")
        plain = name.replace("[", "").replace("]", "")
        return (
            f"IF NOT EXISTS (SELECT 1 FROM sys.indexes WHERE name = N'{plain}' "
            f"AND object_id = OBJECT_ID(N'{bare}')) CREATE INDEX {name} ON {table} ({columns})"
        )

    def insert_ignore(self, table: str, columns: str, select: str, conflict: str) -> str:
        """Return a plain INSERT: its SELECT carries NOT EXISTS with UPDLOCK, HOLDLOCK."""
        return f"INSERT INTO {table} ({columns}) {select}"

    def lock_ddl(self) -> str:
        """Serialise concurrent init_db runs."""
        return (
            "EXEC sp_getapplock @Resource = N'engine_init_db', @LockMode = N'Exclusive', "
            "@LockOwner = N'Transaction'"
        )


_DIALECTS: dict[str, type[Dialect]] = {
    "postgresql": PostgresDialect,
    "mysql": MysqlDialect,
    "sqlite": SqliteDialect,
    "mssql": MssqlDialect,
}


def get_dialect(name: str) -> Dialect:
    """Return the dialect object for a name (mssql, postgresql, mysql, sqlite)."""
    try:
        return _DIALECTS[name]()
    except KeyError:
        raise ConfigError(
            f"dialect: {name!r} is not one of {', '.join(sorted(_DIALECTS))}"
        ) from None


def driver_name(dsn: str) -> str | None:
    """Return the Driver= attribute of an ODBC connection string, without braces."""
    match = _DRIVER.search(dsn)
    return match.group(1).strip().strip("{}").strip() if match else None


def detect_dialect(dsn: str) -> str:
    """Name the dialect from the DSN's Driver= attribute; ConfigError when it cannot."""
    driver = (driver_name(dsn) or "").lower()
    if not driver:
        raise ConfigError("dialect: the DSN names no Driver=; set the dialect explicitly")
    if "sql server" in driver or "freetds" in driver or "tds" in driver:
        return "mssql"
    if "postgres" in driver or "psqlodbc" in driver:
        return "postgresql"
    if "mariadb" in driver or "mysql" in driver or "maodbc" in driver:
        return "mysql"
    if "sqlite" in driver:
        return "sqlite"
    raise ConfigError(f"dialect: cannot tell the database from driver {driver!r}; set it")
