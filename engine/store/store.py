"""The store: every operation the engine performs on its database, dialect-neutral.

CONTRACT (being implemented): the signatures and docstrings below are what the engine codes
against. Each method runs its own short transaction(s); none spans a network call.

Every fenced write first reads the matching items under a row lock (``FOR UPDATE``, SQL
Server's ``UPDLOCK``, SQLite's ``BEGIN IMMEDIATE``) or, on PostgreSQL, gets them back from
``UPDATE ... RETURNING``, so the matched set never depends on a driver's rowcount (MariaDB
counts *changed* rows unless FOUND_ROWS is set). Each whole transaction is retried through
``engine.retry.retry_store`` on deadlocks, lock timeouts and lost connections.
"""

from __future__ import annotations

import asyncio
import logging
import re
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Iterator, Sequence
from dataclasses import fields as dc_fields
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, TypeVar

import orjson

from engine.errors import (
    ConfigError,
    DataFitError,
    StaleClaimError,
    StoreError,
    TransientStoreError,
)
from engine.job import JobSpec
from engine.retry import retry_store
from engine.settings import StoreSettings
from engine.store.dialects import Dialect, detect_dialect, get_dialect
from engine.store.models import (
    Adopted,
    ApplyOutcome,
    ApplyRow,
    BatchRecord,
    ClaimedItem,
    Holding,
    RequeueOutcome,
    RequeueRow,
)
from engine.store.pool import Connection, Pool
from engine.store.schema import (
    BATCH_COLUMNS,
    BATCH_INTS,
    KEY_CHARS,
    SCHEMA_VERSION,
    Tables,
    ddl_statements,
)

__all__ = ["Store"]

log = logging.getLogger("engine.store")
T = TypeVar("T")
ITEM_STATES = ("pending", "claimed", "submitted", "done", "dead")
_CHUNK = 500  # rows per transaction / keys per IN list
# Rows per apply transaction where the rows travel as one JSON parameter (SQLite, PostgreSQL):
# the statement count per chunk is fixed, so bigger chunks mean fewer round trips.
_JSON_CHUNK = 2000
_CHUNK_BYTES = 8 * 1024 * 1024  # text per apply transaction, under every packet limit
_MAX_ERROR_CHARS = 4000
# PostgreSQL fenced joins compare the state through an expression no index serves, so the
# planner looks each row up by primary key instead of hashing every claimed or submitted item
# of the job (what a state index with a constant invites, worst on a table without stats).
_PG_UNINDEXED = "(i.{} || '')"
# After a discovery that inserted this many items, PostgreSQL gets fresh statistics at once
# (autovacuum comes later): without them the planner guesses a job holds a handful of items.
_ANALYZE_AFTER_ROWS = 1000
_UPDATABLE = frozenset(BATCH_COLUMNS) - {"id", "job", "created_at", "updated_at"}


def _chunks(seq: Sequence[T], size: int) -> Iterator[Sequence[T]]:
    """Slices of at most size items."""
    for start in range(0, len(seq), max(1, size)):
        yield seq[start : start + size]


def _key_list(dialect: Dialect, keys: Sequence[Any]) -> tuple[str, list[Any]]:
    """Return an IN list of item keys and its parameters.

    SQLite's ODBC driver binds each parameter slowly, so there the keys travel as one JSON
    array parameter read back with json_each (SQLite >= 3.38 has JSON built in).
    """
    if dialect.name == "sqlite":
        # default=str: an integer key wider than 64 bits is bound as a Decimal (see bind_key)
        return "(SELECT value FROM json_each(?))", [
            orjson.dumps(list(keys), default=str).decode()
        ]
    return f"({_marks(len(keys))})", list(keys)


def _json_rows(rows: Iterable[Sequence[Any]]) -> str | None:
    """Encode rows as one JSON array of arrays; None when a value has no JSON form.

    One parameter instead of one per value: SQLite's ODBC driver binds each parameter slowly
    and psqlODBC expands every marker into the statement text, so thousands of markers cost
    more than the statement itself. The caller falls back to per-row statements on None.
    """
    try:
        return orjson.dumps(list(rows)).decode()
    except TypeError:  # lone surrogates, or a type orjson cannot encode
        return None


def _apply_chunks(rows: Sequence[ApplyRow], max_rows: int) -> Iterator[list[ApplyRow]]:
    """Chunks of at most max_rows rows and about _CHUNK_BYTES of text (1 MB values exist)."""
    chunk: list[ApplyRow] = []
    size = 0
    for row in rows:
        row_bytes = sum(len(v) for v in row.values.values() if isinstance(v, str))
        if chunk and (len(chunk) >= max_rows or size + row_bytes > _CHUNK_BYTES):
            yield chunk
            chunk, size = [], 0
        chunk.append(row)
        size += row_bytes
    if chunk:
        yield chunk


def _marks(n: int) -> str:
    """N comma-separated parameter markers."""
    return ", ".join("?" * n)


def _to_datetime(value: Any) -> datetime | None:
    """Normalise a timestamp read back from any driver to an aware UTC datetime.

    The engine's tables hold UTC without a zone (every dialect's ``now`` is UTC); drivers hand
    them back naive (SQLite as text), and Python would take a naive value as local time.
    """
    if value is None:
        return None
    found = value if isinstance(value, datetime) else datetime.fromisoformat(str(value))
    if found.tzinfo is None:
        return found.replace(tzinfo=UTC)
    return found.astimezone(UTC)


# The apply-failure count kept in a batch's error text (see Store.note_apply_failure).
_APPLY_FAILED = re.compile(r"^(?:quarantined: )?apply failed (\d+) times: ")


def _schema_and_table(name: str) -> tuple[str | None, str]:
    """Split ``schema.table`` for information_schema lookups (no schema: the current one)."""
    schema, _dot, table = name.rpartition(".")
    return (schema or None), table


def _error_text(reason: str) -> str:
    """Cap a stored error so any dialect's column holds it."""
    return reason[:_MAX_ERROR_CHARS]


# MariaDB "for column 'out_name' at row 1" or "for column `db`.`t`.`out_name` at row 1",
# SQLite "in INTEGER column t.years", SQL Server 2628 "column 'out_name'. Truncated ...".
_COLUMN_IN_MESSAGE = re.compile(r"\bcolumn\s+([`'\"\[\]\w.$]+)")
_INT_RANGES = {"smallint": 2**15, "integer": 2**31, "bigint": 2**63}
_SIZED_TEXT = re.compile(r"^(?:character varying|character|varchar|char)\((\d+)\)$")


def _misfits(sql_type: str | None, value: Any) -> bool:
    """Whether a value plainly cannot fit a PostgreSQL type (sized text, or an integer)."""
    if sql_type is None or value is None:
        return False
    sized = _SIZED_TEXT.match(sql_type)
    if sized:
        return isinstance(value, str) and len(value) > int(sized.group(1))
    bound = _INT_RANGES.get(sql_type)
    if bound is not None:
        if isinstance(value, bool):
            return False
        if isinstance(value, int):
            return not -bound <= value < bound
        return not isinstance(value, float)  # text or JSON in an integer column
    return False


_NOT_WRITTEN = (
    "source row not written: its UPDATE changed no row (the row is gone, or the driver "
    "reported a failed write as a warning)"
)


class _SourceNotWrittenError(Exception):
    """Rows an apply transaction marked done whose source UPDATE did not land; it rolls back."""

    def __init__(self, keys: set[str]) -> None:
        super().__init__(f"{len(keys)} source rows not written")
        self.keys = keys


class _UndecodableTextError(ValueError):
    """A source text value that is not valid UTF-8; the message names the column."""


def _decoded(column: str, value: Any) -> Any:
    """Decode a text column read as hex of its bytes (SQLite); _UndecodableTextError if bad."""
    if value is None:
        return None
    try:
        return bytes.fromhex(str(value)).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise _UndecodableTextError(f"column {column}, byte {exc.start}") from None


class _Source:
    """The job's source table, validated and quoted for one dialect."""

    def __init__(self, dialect: Dialect, job: JobSpec) -> None:
        src = job.source
        self.spec = src
        self.table = dialect.table(src.table, "source.table")
        self.key = dialect.quote(src.key_column, "source.key_column")
        self.processed = dialect.quote(src.processed_column, "source.processed_column")
        self.text_names = list(src.text_columns)
        self.texts = [dialect.quote(c, "source.text_columns") for c in src.text_columns]
        self.outputs = {c: dialect.quote(c, "columns") for c in job.output_columns}
        self.filter = f" AND ({src.extra_filter})" if src.extra_filter else ""

    def bind_key(self, key: str) -> Any:
        """Return the key as the source table's type (items store it as text).

        Integers wider than 64 bits (DECIMAL(38,0) keys) go as Decimal: the drivers bind
        them as exact numerics, where an int raises OverflowError.
        """
        if self.spec.key_type != "int":
            return key
        value = int(key)
        return value if -(2**63) <= value < 2**63 else Decimal(value)


class Store:
    """The engine's memory: the items and batches tables, and fenced writes to the source."""

    def __init__(self, settings: StoreSettings) -> None:
        """Validate names and pick the dialect; no connection yet (see open())."""
        self.settings = settings
        self.dialect = get_dialect(settings.dialect or detect_dialect(settings.dsn))
        self.tables = Tables.from_settings(self.dialect, settings)
        self._pool: Pool | None = None
        self._pg_types: dict[str, dict[str, str]] = {}
        # SQLite has one writer per file: this process's transactions queue here instead of
        # spinning in the driver's busy handler (which sleeps) against each other.
        self._sqlite_writer = asyncio.Lock() if self.dialect.name == "sqlite" else None

    @classmethod
    async def open(cls, settings: StoreSettings) -> Store:
        """Open the pool (detecting the dialect from the DSN when not set)."""
        store = cls(settings)
        store._pool = Pool(
            store.dialect, settings.dsn, settings.pool_size, settings.query_timeout_s
        )
        async def probe() -> None:
            async with store.pool.acquire():
                pass

        try:
            # Fail here, not at the first claim, when the DSN or server is wrong; a connection
            # killed while its session was being set up is tried again a few times.
            await retry_store(probe, attempts=3)
        except BaseException:
            await store._pool.close()
            raise
        return store

    async def close(self) -> None:
        """Close every connection and the thread pool; idempotent."""
        if self._pool is not None:
            await self._pool.close()

    async def __aenter__(self) -> Store:
        """Return self; the pool is already open."""
        return self

    async def __aexit__(self, *exc: object) -> None:
        """Close the store."""
        await self.close()

    @property
    def dialect_name(self) -> str:
        """One of mssql, postgresql, mysql, sqlite."""
        return self.dialect.name

    @property
    def pool(self) -> Pool:
        """The connection pool (open() must have run)."""
        if self._pool is None:
            raise StoreError("the store is not open; use Store.open()")
        return self._pool

    def _c(self, name: str) -> str:
        """Quote one of our own (constant, known-safe) column names."""
        return f"{self.dialect.open_quote}{name}{self.dialect.close_quote}"

    async def _tx(self, work: Callable[[Connection], Awaitable[T]]) -> T:
        """Run work inside one transaction, the whole of it retried on transient errors."""

        async def attempt() -> T:
            if self._sqlite_writer is None:
                async with self.pool.transaction() as conn:
                    return await work(conn)
            async with self._sqlite_writer, self.pool.transaction() as conn:
                return await work(conn)

        return await self._retried(attempt, work)

    async def _read(self, work: Callable[[Connection], Awaitable[T]]) -> T:
        """Run read-only work on a pooled connection, retried on transient errors."""

        async def attempt() -> T:
            async with self.pool.acquire() as conn:
                return await work(conn)

        return await self._retried(attempt, work)

    async def _retried(self, attempt: Callable[[], Awaitable[T]], work: object) -> T:
        """Run attempt through retry_store; when it gives up, log which operation it was."""
        try:
            return await retry_store(attempt, budget_s=self.settings.outage_s)
        except TransientStoreError as exc:
            # The exception text is the database's; the operation is what an operator needs.
            operation = getattr(work, "__qualname__", "?").split(".<locals>")[0]
            log.error("store: %s gave up after retrying (outage_s=%g): %s",
                      operation, self.settings.outage_s, exc)
            raise

    # -- SQL (pure functions of dialect and names; public so SQL Server's can be checked) ---------

    def sql_ddl(self) -> list[str]:
        """Every CREATE statement of init_db."""
        return ddl_statements(self.dialect, self.tables)

    def sql_meta_insert(self) -> str:
        """Insert the schema version row when absent (params: name, value[, name])."""
        c = self._c
        cols = f"{c('name')}, {c('value')}"
        if self.dialect.name == "mssql":
            return (
                f"INSERT INTO {self.tables.meta} ({cols}) SELECT ?, ? WHERE NOT EXISTS "
                f"(SELECT 1 FROM {self.tables.meta} WITH (UPDLOCK, HOLDLOCK) "
                f"WHERE {c('name')} = ?)"
            )
        return self.dialect.insert_ignore(self.tables.meta, cols, "VALUES (?, ?)", c("name"))

    def sql_discover(self, job: JobSpec, limit: int | None) -> str:
        """INSERT one pending item per pending source row without one (params: job, job)."""
        d, c, src = self.dialect, self._c, _Source(self.dialect, job)
        key_text = d.as_text(f"s.{src.key}")
        hint = " WITH (UPDLOCK, HOLDLOCK)" if d.name == "mssql" else ""
        top = d.top(limit) if limit is not None else ""
        select = (
            f"SELECT {top}?, {key_text}, 'pending', 0, {d.now}, {d.now} "
            f"FROM {src.table} s WHERE s.{src.processed} IS NULL{src.filter} "
            f"AND NOT EXISTS (SELECT 1 FROM {self.tables.items} i{hint} "
            f"WHERE i.{c('job')} = ? AND i.{c('source_key')} = {key_text})"
        )
        if limit is not None:
            select = d.limit(f"{select} ORDER BY s.{src.key}", limit)
        cols = ", ".join(
            c(n) for n in ("job", "source_key", "state", "attempts", "created_at", "updated_at")
        )
        return d.insert_ignore(self.tables.items, cols, select, f"{c('job')}, {c('source_key')}")

    def _claimable(self) -> str:
        """WHERE clause of claimable items (param: job)."""
        c, now = self._c, self.dialect.now
        return (
            f"{c('job')} = ? AND ({c('state')} = 'pending' OR ({c('state')} = 'claimed' "
            f"AND {c('lease_expires_at')} <= {now}))"
        )

    def _claim_set(self) -> str:
        """SET clause of a claim (params: token, worker, lease)."""
        c, d = self._c, self.dialect
        return (
            f"{c('state')} = 'claimed', {c('claim_token')} = ?, {c('worker_id')} = ?, "
            f"{c('lease_expires_at')} = {d.lease_expr()}, {c('updated_at')} = {d.now}"
        )

    def sql_claim(self, limit: int) -> str:
        """One-statement claim (PostgreSQL, SQL Server); params: job, token, worker, lease."""
        c, d, items = self._c, self.dialect, self.tables.items
        if d.name == "postgresql":
            # Joined back by ctid (a TID scan; the rows are locked, so it cannot move): a join
            # on (job, source_key) made the planner walk the job's (job, state) index once per
            # claimed row. "state IN" lets the pick skip the job's done and dead items.
            return (
                f"WITH cte AS (SELECT ctid FROM {items} WHERE {self._claimable()} "
                f"AND {c('state')} IN ('pending', 'claimed') "
                f"LIMIT {int(limit)} FOR UPDATE SKIP LOCKED) "
                f"UPDATE {items} AS i SET {self._claim_set()} FROM cte "
                f"WHERE i.ctid = cte.ctid "
                f"RETURNING i.{c('source_key')}, i.{c('attempts')}"
            )
        if d.name == "mssql":
            cols = ", ".join(
                c(n)
                for n in (
                    "job",
                    "source_key",
                    "state",
                    "claim_token",
                    "worker_id",
                    "lease_expires_at",
                    "updated_at",
                    "attempts",
                )
            )
            return (
                f"SET NOCOUNT ON; WITH cte AS (SELECT {d.top(limit)}{cols} FROM {items}"
                f"{d.skip_locked_hint} WHERE {self._claimable()} ORDER BY {c('source_key')}) "
                f"UPDATE cte SET {self._claim_set()} "
                f"OUTPUT inserted.{c('source_key')}, inserted.{c('attempts')};"
            )
        raise StoreError(f"{d.name}: claim is done in steps (see claim())")

    def sql_claim_select(self, limit: int) -> str:
        """MariaDB/MySQL claim, step 1: pick and lock claimable rows (param: job)."""
        c, d = self._c, self.dialect
        body = (
            f"SELECT {c('source_key')}, {c('attempts')} FROM {self.tables.items} "
            f"WHERE {self._claimable()}"
        )
        return d.limit(body, limit) + d.skip_locked_suffix

    def sql_claim_sqlite(self, limit: int) -> str:
        """SQLite claim inside BEGIN IMMEDIATE; params: token, worker, lease, job, job, job.

        Pending rows and expired claims are picked by two index range scans joined with
        UNION ALL: SQLite would otherwise walk every row of the job for the OR.
        """
        c, d, items, n = self._c, self.dialect, self.tables.items, int(limit)
        pending = (
            f"SELECT {c('source_key')} FROM {items} WHERE {c('job')} = ? "
            f"AND {c('state')} = 'pending' LIMIT {n}"
        )
        expired = (
            f"SELECT {c('source_key')} FROM {items} WHERE {c('job')} = ? "
            f"AND {c('state')} = 'claimed' AND {c('lease_expires_at')} <= {d.now} LIMIT {n}"
        )
        return (
            f"UPDATE {items} SET {self._claim_set()} WHERE {c('job')} = ? AND "
            f"{c('source_key')} IN (SELECT {c('source_key')} FROM ({pending}) "
            f"UNION ALL SELECT {c('source_key')} FROM ({expired}) LIMIT {n})"
        )

    def sql_claim_pick_sqlite(self, limit: int) -> str:
        """SQLite claim, step 1 inside BEGIN IMMEDIATE: claimable keys (params: job, job).

        Like sql_claim_sqlite's subquery: two index range scans joined with UNION ALL.
        """
        c, d, items, n = self._c, self.dialect, self.tables.items, int(limit)
        cols = f"{c('source_key')}, {c('attempts')}"
        pending = (
            f"SELECT {cols} FROM {items} WHERE {c('job')} = ? "
            f"AND {c('state')} = 'pending' LIMIT {n}"
        )
        expired = (
            f"SELECT {cols} FROM {items} WHERE {c('job')} = ? "
            f"AND {c('state')} = 'claimed' AND {c('lease_expires_at')} <= {d.now} LIMIT {n}"
        )
        return f"SELECT {cols} FROM ({pending}) UNION ALL SELECT {cols} FROM ({expired}) LIMIT {n}"

    def sql_lock_items(self, n_keys: int) -> str:
        """Read items by primary key under a row lock (params: job, *keys).

        The state is checked in Python, not in the WHERE, so every planner takes the primary
        key instead of scanning the (job, state) index.
        """
        c, d = self._c, self.dialect
        return (
            f"SELECT {c('source_key')}, {c('claim_token')}, {c('attempts')}, {c('state')} "
            f"FROM {self.tables.items}{d.lock_hint} WHERE {c('job')} = ? "
            f"AND {c('source_key')} IN {_key_list(d, ['?'] * n_keys)[0]}{d.lock_suffix}"
        )

    def sql_apply_source(self, job: JobSpec, columns: Sequence[str]) -> str:
        """Per-row UPDATE of the source (params: *values, key)."""
        src = _Source(self.dialect, job)
        sets = [
            f"{src.outputs.get(col) or self.dialect.quote(col, 'columns')} = ?" for col in columns
        ]
        sets.append(f"{src.processed} = CURRENT_TIMESTAMP")
        return f"UPDATE {src.table} SET {', '.join(sets)} WHERE {src.key} = ?"

    def sql_apply_source_json(self, job: JobSpec, columns: Sequence[str]) -> str:
        """SQLite: UPDATE the source from one JSON parameter of [key, *values] arrays."""
        src = _Source(self.dialect, job)
        sets = [
            f"{src.outputs.get(col) or self.dialect.quote(col, 'columns')} = v.c{i}"
            for i, col in enumerate(columns)
        ]
        sets.append(f"{src.processed} = CURRENT_TIMESTAMP")
        names = ["k", *(f"c{i}" for i in range(len(columns)))]
        return (
            f"UPDATE {src.table} AS s SET {', '.join(sets)} "
            f"FROM {self._json_table(names)} AS v WHERE s.{src.key} = v.k"
        )

    def sql_items_done(self, n_keys: int) -> str:
        """Mark items done (params: job, *keys); the caller fenced and locked them."""
        c, now = self._c, self.dialect.now
        return (
            f"UPDATE {self.tables.items} SET {c('state')} = 'done', {c('last_error')} = NULL, "
            f"{c('lease_expires_at')} = NULL, {c('updated_at')} = {now} "
            f"WHERE {c('job')} = ? AND {c('source_key')} IN "
            f"{_key_list(self.dialect, ['?'] * n_keys)[0]}"
        )

    # -- schema -------------------------------------------------------------------------------

    async def init_db(self) -> None:
        """Create the engine's tables and indexes if absent, and the schema version row.

        Idempotent, and safe when several workers run it at once.
        """
        statements = self.sql_ddl()
        if self.dialect.name == "sqlite":
            # WAL lets readers run beside the single writer; it persists in the file.
            async def wal(conn: Connection) -> None:
                await conn.fetchall("PRAGMA journal_mode=WAL")

            try:
                await self._read(wal)
            except StoreError as exc:  # another process holds the lock; WAL is only a speed-up
                log.debug("journal_mode=WAL not set: %s", exc)

        async def work(conn: Connection) -> None:
            lock = self.dialect.lock_ddl()
            if lock:
                await conn.execute(lock)
            for sql in statements:
                await conn.execute(sql)
            params: list[Any] = ["schema_version", str(SCHEMA_VERSION)]
            if self.dialect.name == "mssql":
                params.append("schema_version")
            await conn.execute(self.sql_meta_insert(), params)
            await self._migrate(conn)

        await self._tx(work)

    async def _migrate(self, conn: Connection) -> None:
        """Bring tables made by an older version up to SCHEMA_VERSION; idempotent.

        Each step looks at the table itself, not only at the version row, so a step that ran
        (MariaDB's ALTER commits on its own) is never run twice.
        """
        c = self._c
        if self.dialect.name == "mysql":
            # 2: source_key compares exactly (NO PAD binary): 'pad' and 'pad ' are two items.
            schema, table = _schema_and_table(self.settings.items_table)
            found = await conn.fetchall(
                "SELECT COLLATION_NAME FROM information_schema.COLUMNS "
                "WHERE TABLE_SCHEMA = COALESCE(?, DATABASE()) AND TABLE_NAME = ? "
                "AND COLUMN_NAME = 'source_key'",
                [schema, table],
            )
            if found and str(found[0][0]).lower() != "utf8mb4_nopad_bin":
                await conn.execute(
                    f"ALTER TABLE {self.tables.items} MODIFY {c('source_key')} "
                    f"{self.dialect.t_key}{self.dialect.key_collation} NOT NULL"
                )
        rows = await conn.fetchall(
            f"SELECT {c('value')} FROM {self.tables.meta} WHERE {c('name')} = ?",
            ["schema_version"],
        )
        if rows and int(rows[0][0]) < SCHEMA_VERSION:
            await conn.execute(
                f"UPDATE {self.tables.meta} SET {c('value')} = ? WHERE {c('name')} = ?",
                [str(SCHEMA_VERSION), "schema_version"],
            )

    async def schema_version(self) -> int | None:
        """Return the schema version recorded by init_db, or None before it ran."""
        c = self._c

        async def work(conn: Connection) -> list[tuple[Any, ...]]:
            return await conn.fetchall(
                f"SELECT {c('value')} FROM {self.tables.meta} WHERE {c('name')} = ?",
                ["schema_version"],
            )

        rows = await self._read(work)
        return int(rows[0][0]) if rows else None

    async def check_source(self, job: JobSpec) -> None:
        """Raise ConfigError naming the table or column when the job's source does not exist."""
        src = _Source(self.dialect, job)
        top = self.dialect.top(1)
        sql = f"SELECT {top}* FROM {src.table} WHERE 1 = 0"

        async def work(conn: Connection) -> list[str]:
            return await conn.describe(sql)

        # PostgreSQL keeps the case of quoted names; the others compare case-insensitively.
        exact = self.dialect.name == "postgresql"
        try:
            names = {n if exact else n.lower() for n in await self._read(work)}
        except StoreError as exc:
            raise ConfigError(f"source.table: {job.source.table!r} cannot be read: {exc}") from exc
        wanted = [
            ("source.key_column", job.source.key_column),
            ("source.processed_column", job.source.processed_column),
            *(("source.text_columns", col) for col in job.source.text_columns),
            *(("columns", col) for col in job.output_columns),
        ]
        for setting, col in wanted:
            if (col if exact else col.lower()) not in names:
                raise ConfigError(f"{setting}: column {col!r} not in {job.source.table!r}")

    # -- items --------------------------------------------------------------------------------

    async def discover(self, job: JobSpec, limit: int | None = None) -> int:
        """Insert an item (state pending) for each pending source row that has none yet.

        Idempotent and safe when several workers do it at once. Returns rows inserted.
        """
        sql = self.sql_discover(job, limit)
        reopened = await self.reopen_reset(job)

        async def work(conn: Connection) -> int:
            return max(0, await conn.execute(sql, [job.name, job.name]))

        inserted = await self._tx(work) + reopened
        log.debug("discovered %d items for job %s", inserted, job.name)
        if inserted >= _ANALYZE_AFTER_ROWS and self.dialect.name == "postgresql":

            async def analyze(conn: Connection) -> None:
                await conn.execute(f"ANALYZE {self.tables.items}")

            try:
                await self._tx(analyze)
            except StoreError as exc:  # not the owner, say: only a planner hint is lost
                log.debug("ANALYZE of the items table skipped: %s", exc)
        return inserted

    async def claim(
        self, job: JobSpec, worker_id: str, limit: int, lease_s: float
    ) -> list[ClaimedItem]:
        """Claim up to ``limit`` pending items with a fresh claim token and a lease.

        Items in state claimed whose lease expired count as pending (their worker died before
        binding them to a batch). Each returned item carries its source row's text columns.
        Two concurrent claims never return the same item.
        """
        if limit <= 0:
            return []
        token = uuid.uuid4().hex
        lease = self.dialect.lease_param(lease_s)
        c, d = self._c, self.dialect
        tries = 0
        landed_sql = (
            f"SELECT {c('source_key')}, {c('attempts')} FROM {self.tables.items} "
            f"WHERE {c('job')} = ? AND {c('state')} = 'claimed' AND {c('claim_token')} = ?"
        )

        async def work(conn: Connection) -> list[tuple[Any, ...]]:
            nonlocal tries
            tries += 1
            if tries > 1:
                # A retry after a COMMIT whose outcome was lost: if it landed, those rows are
                # ours (nobody else has the token); claiming more would strand them.
                landed = await conn.fetchall(landed_sql, [job.name, token])
                if landed:
                    return landed
            if d.name in {"postgresql", "mssql"}:
                return await conn.fetchall(
                    self.sql_claim(limit), [job.name, token, worker_id, lease]
                )
            if d.name == "sqlite":
                # BEGIN IMMEDIATE holds the write lock: pick, then update exactly those keys
                # (reading them back by token would scan every claimed item of the job).
                picked = await conn.fetchall(self.sql_claim_pick_sqlite(limit), [job.name] * 2)
                if picked:
                    in_sql, in_params = _key_list(d, [str(r[0]) for r in picked])
                    await conn.execute(
                        f"UPDATE {self.tables.items} SET {self._claim_set()} "
                        f"WHERE {c('job')} = ? AND {c('source_key')} IN {in_sql}",
                        [token, worker_id, lease, job.name, *in_params],
                    )
                return picked
            picked = await conn.fetchall(self.sql_claim_select(limit), [job.name])
            for keys in _chunks([str(r[0]) for r in picked], _CHUNK):
                await conn.execute(
                    f"UPDATE {self.tables.items} SET {self._claim_set()} "
                    f"WHERE {c('job')} = ? AND {c('source_key')} IN ({_marks(len(keys))})",
                    [token, worker_id, lease, job.name, *keys],
                )
            return picked

        claimed = [(str(r[0]), int(r[1])) for r in await self._tx(work)]
        if not claimed:
            return []
        rows, unreadable = await self._read_source_rows(job, [k for k, _ in claimed])
        # A row that is gone or cannot be read would come back on every claim: dead now.
        dead = [
            RequeueRow(k, token, unreadable.get(k, "source row not found"))
            for k, _ in claimed
            if k not in rows
        ]
        if dead:
            await self.dead_letter(job, dead)
        return [
            ClaimedItem(key=k, claim_token=token, attempts=a, row=rows[k])
            for k, a in claimed
            if k in rows
        ]

    async def _fenced(
        self,
        conn: Connection,
        job_name: str,
        pairs: Sequence[tuple[str, str]],
        states: Sequence[str],
    ) -> dict[str, int]:
        """Lock the items of (key, token) pairs; return key -> attempts of those still held."""
        wanted = dict(pairs)
        held: dict[str, int] = {}
        for chunk in _chunks(list(wanted), _CHUNK):
            in_params = _key_list(self.dialect, chunk)[1]
            rows = await conn.fetchall(self.sql_lock_items(len(chunk)), [job_name, *in_params])
            for key, token, attempts, state in rows:
                if wanted.get(str(key)) == token and state in states:
                    held[str(key)] = int(attempts)
        return held

    async def _set_items(
        self,
        conn: Connection,
        job_name: str,
        keys: Sequence[str],
        assignments: str,
        params: Sequence[Any],
    ) -> None:
        """UPDATE items SET <assignments> for these keys (assignment params first)."""
        c = self._c
        for chunk in _chunks(list(keys), _CHUNK):
            in_sql, in_params = _key_list(self.dialect, chunk)
            await conn.execute(
                f"UPDATE {self.tables.items} SET {assignments}, {c('updated_at')} = "
                f"{self.dialect.now} WHERE {c('job')} = ? AND {c('source_key')} IN {in_sql}",
                [*params, job_name, *in_params],
            )

    def _to_pending(self) -> str:
        """Return the assignments that put an item back to pending and clear its claim."""
        c = self._c
        return (
            f"{c('state')} = 'pending', {c('claim_token')} = NULL, {c('worker_id')} = NULL, "
            f"{c('lease_expires_at')} = NULL, {c('batch_id')} = NULL, {c('custom_id')} = NULL"
        )

    async def release(self, job: JobSpec, keys_tokens: Sequence[tuple[str, str]]) -> int:
        """Return claimed (not yet batched) items to pending, no attempt burned. Fenced."""
        total = 0
        for chunk in _chunks(list(keys_tokens), _CHUNK):

            async def work(conn: Connection, chunk: Sequence[tuple[str, str]] = chunk) -> int:
                held = await self._fenced(conn, job.name, chunk, ["claimed"])
                await self._set_items(conn, job.name, list(held), self._to_pending(), [])
                return len(held)

            total += await self._tx(work)
        return total

    async def renew_claims(
        self, job: JobSpec, keys_tokens: Sequence[tuple[str, str]], lease_s: float
    ) -> list[str]:
        """Extend the leases of claimed items still held; return the keys no longer held."""
        lost: list[str] = []
        lease = self.dialect.lease_param(lease_s)
        c = self._c
        for chunk in _chunks(list(keys_tokens), _CHUNK):

            async def work(conn: Connection, chunk: Sequence[tuple[str, str]] = chunk) -> set[str]:
                held = await self._fenced(conn, job.name, chunk, ["claimed"])
                await self._set_items(
                    conn,
                    job.name,
                    list(held),
                    f"{c('lease_expires_at')} = {self.dialect.lease_expr()}",
                    [lease],
                )
                return set(held)

            held = await self._tx(work)
            lost.extend(k for k, _ in chunk if k not in held)
        return lost

    async def reap_expired(self, job: JobSpec, worker_id: str | None = None) -> int:
        """Return claimed items whose lease expired to pending. Returns how many.

        With ``worker_id``, that worker's claims go back too whatever their lease: a worker
        starting under the id of one that crashed knows those claims are orphans.
        """
        c, d = self._c, self.dialect
        params: list[Any] = [job.name]
        held = f"{c('lease_expires_at')} <= {d.now}"
        if worker_id is not None:
            held = f"({held} OR {c('worker_id')} = ?)"
            params.append(worker_id)

        async def work(conn: Connection) -> int:
            # The SET changes state, which the WHERE pins: changed rows == matched rows.
            return await conn.execute(
                f"UPDATE {self.tables.items} SET {self._to_pending()}, {c('updated_at')} = "
                f"{d.now} WHERE {c('job')} = ? AND {c('state')} = 'claimed' AND {held}",
                params,
            )

        return max(0, await self._tx(work))

    # -- batches ------------------------------------------------------------------------------

    async def create_draft(
        self,
        record: BatchRecord,
        items: Sequence[tuple[str, str, str]],
        lease_s: float,
    ) -> int:
        """Insert the batch (state draft, owned by record.worker_id) and bind items to it.

        ``items`` are (key, claim_token, custom_id); each moves claimed -> submitted with the
        local batch id and custom_id, fenced by its claim token. One transaction. Returns how
        many items were bound (fewer means some claims were lost to another worker).
        """
        c, d = self._c, self.dialect
        if len({cid for _k, _t, cid in items}) != len(items):
            # Hashed custom_ids that collide would hand one row's answer to another.
            raise StoreError(f"batch {record.id}: two items share a custom_id; not bound")
        skip = {"created_at", "updated_at", "lease_expires_at", "state"}
        names = [n for n in BATCH_COLUMNS if n not in skip]
        values = [getattr(record, n) for n in names]
        insert = (
            f"INSERT INTO {self.tables.batches} ({', '.join(c(n) for n in names)}, "
            f"{c('state')}, {c('created_at')}, {c('updated_at')}, {c('lease_expires_at')}) "
            f"VALUES ({_marks(len(names))}, 'draft', {d.now}, {d.now}, {d.lease_expr()})"
        )
        bind = (
            f"UPDATE {self.tables.items} SET {c('state')} = 'submitted', {c('batch_id')} = ?, "
            f"{c('custom_id')} = ?, {c('updated_at')} = {d.now} "
            f"WHERE {c('job')} = ? AND {c('source_key')} = ? AND {c('state')} = 'claimed'"
        )
        job_name = record.job
        count_bound = (
            f"SELECT COUNT(*) FROM {self.tables.items} WHERE {c('batch_id')} = ? "
            f"AND {c('job')} = ?"
        )

        async def work(conn: Connection) -> int:
            found = await conn.fetchall(self._lock_batch_sql(), [record.id])
            if not found:
                await conn.execute(insert, [*values, d.lease_param(lease_s)])
                return await bind_items(conn)
            # A retry after a lost COMMIT that had in fact landed: the row is ours already.
            job, worker = found[0]
            if str(job) != job_name or worker != record.worker_id:
                raise StaleClaimError(
                    f"batch {record.id} already exists for job {job!r}, worker {worker!r}"
                )
            await bind_items(conn)  # fenced on state 'claimed': binds only what is unbound
            rows = await conn.fetchall(count_bound, [record.id, job_name])
            return int(rows[0][0])

        async def bind_items(conn: Connection) -> int:
            if d.name == "postgresql":
                return await self._bind_pg(conn, record, items)
            if d.name != "sqlite":
                return await bind_rows(conn, items)
            bound = 0
            for chunk in _chunks(list(items), _JSON_CHUNK):  # bounded statement size
                count = await self._bind_sqlite(conn, record, chunk)
                bound += await bind_rows(conn, chunk) if count is None else count
            return bound

        async def bind_rows(conn: Connection, rows: Sequence[tuple[str, str, str]]) -> int:
            held = await self._fenced(conn, job_name, [(k, t) for k, t, _ in rows], ["claimed"])
            await conn.executemany(
                bind, [(record.id, cid, job_name, k) for k, _t, cid in rows if k in held]
            )
            return len(held)

        return await self._tx(work)

    def _json_table(self, names: Sequence[str], types: Sequence[str] | None = None) -> str:
        """Return a derived table read from one JSON parameter (an array of arrays).

        Columns are ``names`` in array order; PostgreSQL casts each to its entry in ``types``
        (text when None). Used as ``... FROM <this> AS v`` in set-based UPDATEs.
        """
        if self.dialect.name == "sqlite":
            picks = ", ".join(
                f"json_extract(value, '$[{i}]') AS {n}" for i, n in enumerate(names)
            )
            return f"(SELECT {picks} FROM json_each(?))"
        picks = ", ".join(
            f"CAST(e ->> {i} AS {types[i] if types else 'text'}) AS {n}"
            for i, n in enumerate(names)
        )
        return f"(SELECT {picks} FROM json_array_elements(CAST(? AS json)) AS e)"

    async def _bind_sqlite(
        self, conn: Connection, record: BatchRecord, items: Sequence[tuple[str, str, str]]
    ) -> int | None:
        """SQLite: fence and bind every item in one UPDATE ... FROM json_each; None to fall back.

        BEGIN IMMEDIATE holds the write lock and SQLite's rowcount counts matched rows.
        """
        c = self._c
        payload = _json_rows((record.job, *item) for item in items)
        if payload is None:
            return None
        # The job travels inside each element, not as "i.job = ?": given a constant on i the
        # planner scans the job's items with json_each in the inner loop; this way it walks
        # json_each once and looks each item up by primary key.
        return await conn.execute(
            f"UPDATE {self.tables.items} AS i SET {c('state')} = 'submitted', "
            f"{c('batch_id')} = ?, {c('custom_id')} = v.cid, "
            f"{c('updated_at')} = {self.dialect.now} "
            f"FROM {self._json_table(['j', 'k', 't', 'cid'])} AS v "
            f"WHERE i.{c('job')} = v.j AND i.{c('source_key')} = v.k "
            f"AND i.{c('claim_token')} = v.t AND i.{c('state')} = 'claimed'",
            [record.id, payload],
        )

    async def _bind_pg(
        self, conn: Connection, record: BatchRecord, items: Sequence[tuple[str, str, str]]
    ) -> int:
        """PostgreSQL: fence and bind items with one JSON-table join per chunk (RETURNING)."""
        c = self._c
        bound = 0
        for chunk in _chunks(list(items), _JSON_CHUNK):
            payload = _json_rows(chunk)
            if payload is None:
                table = f"(VALUES {', '.join('(?, ?, ?)' for _ in chunk)}) AS v(k, t, cid)"
                params: list[Any] = [x for item in chunk for x in item]
            else:
                table = f"{self._json_table(['k', 't', 'cid'])} AS v"
                params = [payload]
            rows = await conn.fetchall(
                f"UPDATE {self.tables.items} AS i SET {c('state')} = 'submitted', "
                f"{c('batch_id')} = ?, {c('custom_id')} = v.cid, "
                f"{c('updated_at')} = {self.dialect.now} FROM {table} "
                f"WHERE i.{c('job')} = ? AND i.{c('source_key')} = v.k "
                f"AND i.{c('claim_token')} = v.t AND {_PG_UNINDEXED.format(c('state'))} "
                f"= 'claimed' RETURNING i.{c('source_key')}",
                [record.id, *params, record.job],
            )
            bound += len(rows)
        return bound

    async def update_batch(
        self, batch_id: str, *, owner: str | None = None, **fields: Any
    ) -> None:
        """Record a batch transition: set the given BatchRecord fields and updated_at.

        Fields are BatchRecord attribute names (state, remote_batch_id, input_file_id, ...).
        With ``owner``, the write is fenced: StaleClaimError when another worker holds the
        batch now (it adopted it after this worker's lease ran out).
        """
        unknown = sorted(set(fields) - _UPDATABLE)
        if unknown:
            raise TypeError(f"update_batch: not updatable fields {', '.join(unknown)}")
        c = self._c
        sets: list[str] = []
        params: list[Any] = []
        for name in sorted(fields):
            value = fields[name]
            if name == "lease_expires_at":
                if value is not None:
                    raise TypeError("update_batch: leases come from the database clock; renew")
                sets.append(f"{c(name)} = NULL")
                continue
            if name == "error" and value is not None:
                value = _error_text(str(value))
            sets.append(f"{c(name)} = ?")
            params.append(value)
        sets.append(f"{c('updated_at')} = {self.dialect.now}")
        sql = f"UPDATE {self.tables.batches} SET {', '.join(sets)} WHERE {c('id')} = ?"

        async def work(conn: Connection) -> None:
            if owner is not None:
                found = await conn.fetchall(self._lock_batch_sql(), [batch_id])
                holder = found[0][1] if found else None
                if holder != owner:
                    raise StaleClaimError(f"batch {batch_id}: held by {holder!r}, not {owner!r}")
            await conn.execute(sql, [*params, batch_id])

        await self._tx(work)

    def _lock_batch_sql(self) -> str:
        """Lock one batch row and read its (job, worker_id) (param: id)."""
        c, d = self._c, self.dialect
        return (
            f"SELECT {c('job')}, {c('worker_id')} FROM {self.tables.batches}{d.lock_hint} "
            f"WHERE {c('id')} = ?{d.lock_suffix}"
        )

    def _batch_select(self) -> str:
        """SELECT of every batch column (no WHERE)."""
        return f"SELECT {', '.join(self._c(n) for n in BATCH_COLUMNS)} FROM {self.tables.batches}"

    @staticmethod
    def _record(row: Sequence[Any]) -> BatchRecord:
        """Build a BatchRecord from a row in BATCH_COLUMNS order."""
        values = dict(zip(BATCH_COLUMNS, row, strict=True))
        for f in dc_fields(BatchRecord):
            value = values[f.name]
            if f.name in {"created_at", "updated_at", "lease_expires_at"}:
                values[f.name] = _to_datetime(value)
            elif f.name == "cost_usd":
                values[f.name] = float(value or 0.0)
            elif f.name in BATCH_INTS:
                values[f.name] = int(value or 0)
        return BatchRecord(**values)

    async def _batches_where(self, where: str, params: Sequence[Any]) -> list[BatchRecord]:
        """Batches matching a WHERE clause."""
        sql = f"{self._batch_select()} WHERE {where}"

        async def work(conn: Connection) -> list[tuple[Any, ...]]:
            return await conn.fetchall(sql, params)

        return [self._record(r) for r in await self._read(work)]

    async def get_batch(self, batch_id: str) -> BatchRecord | None:
        """Return one batch by local id."""
        found = await self._batches_where(f"{self._c('id')} = ?", [batch_id])
        return found[0] if found else None

    async def find_batch_by_remote_id(self, remote_batch_id: str) -> BatchRecord | None:
        """Return the batch that carries this remote id, if any."""
        found = await self._batches_where(f"{self._c('remote_batch_id')} = ?", [remote_batch_id])
        return found[0] if found else None

    async def list_batches(
        self, job: str | None = None, states: Sequence[str] | None = None, limit: int = 100
    ) -> list[BatchRecord]:
        """Return batches, newest first, optionally filtered by job and local state."""
        c, d = self._c, self.dialect
        where, params = ["1 = 1"], []
        if job is not None:
            where.append(f"{c('job')} = ?")
            params.append(job)
        if states:
            where.append(f"{c('state')} IN ({_marks(len(states))})")
            params.extend(states)
        body = (
            f"SELECT {d.top(limit)}{', '.join(c(n) for n in BATCH_COLUMNS)} "
            f"FROM {self.tables.batches} WHERE {' AND '.join(where)} "
            f"ORDER BY {c('created_at')} DESC, {c('id')} DESC"
        )
        sql = d.limit(body, limit)

        async def work(conn: Connection) -> list[tuple[Any, ...]]:
            return await conn.fetchall(sql, params)

        return [self._record(r) for r in await self._read(work)]

    async def adopt_batches(
        self, job: JobSpec, worker_id: str, lease_s: float, states: Sequence[str]
    ) -> list[Adopted]:
        """Take over batches in ``states`` that are this worker's or whose lease expired.

        Sets worker and a new lease atomically (two workers never adopt the same batch) and
        returns them with the worker that held each before. Used at start-up and
        periodically, so a dead worker's batches go on.
        """
        if not states:
            return []
        c, d, batches = self._c, self.dialect, self.tables.batches
        pick = (
            d.limit(
                f"SELECT {d.top(_CHUNK)}{c('id')}, {c('worker_id')} "
                f"FROM {batches}{d.skip_locked_hint} "
                f"WHERE {c('job')} = ? AND {c('state')} IN ({_marks(len(states))}) "
                f"AND ({c('worker_id')} = ? OR {c('worker_id')} IS NULL "
                f"OR {c('lease_expires_at')} IS NULL OR {c('lease_expires_at')} <= {d.now}) "
                f"ORDER BY {c('id')}",
                _CHUNK,
            )
            + d.skip_locked_suffix
        )
        previous: dict[str, str | None] = {}

        async def work(conn: Connection) -> list[tuple[Any, ...]]:
            previous.clear()
            picked = await conn.fetchall(pick, [job.name, *states, worker_id])
            previous.update({str(r[0]): (None if r[1] is None else str(r[1])) for r in picked})
            if not previous:
                return []
            ids = list(previous)
            marks = _marks(len(ids))
            await conn.execute(
                f"UPDATE {batches} SET {c('worker_id')} = ?, "
                f"{c('lease_expires_at')} = {d.lease_expr()}, {c('updated_at')} = {d.now} "
                f"WHERE {c('id')} IN ({marks})",
                [worker_id, d.lease_param(lease_s), *ids],
            )
            return await conn.fetchall(f"{self._batch_select()} WHERE {c('id')} IN ({marks})", ids)

        records = [self._record(r) for r in await self._tx(work)]
        return [Adopted(r, previous.get(r.id)) for r in records]

    async def renew_batch_leases(
        self, worker_id: str, batch_ids: Sequence[str], lease_s: float
    ) -> list[str]:
        """Extend the leases of batches this worker owns; return the ids it no longer owns."""
        c, d, batches = self._c, self.dialect, self.tables.batches
        lost: list[str] = []
        for chunk in _chunks(list(batch_ids), _CHUNK):
            marks = _marks(len(chunk))

            async def work(
                conn: Connection, chunk: Sequence[str] = chunk, marks: str = marks
            ) -> set[str]:
                rows = await conn.fetchall(
                    f"SELECT {c('id')} FROM {batches}{d.lock_hint} WHERE {c('worker_id')} = ? "
                    f"AND {c('id')} IN ({marks}){d.lock_suffix}",
                    [worker_id, *chunk],
                )
                owned = {str(r[0]) for r in rows}
                if owned:
                    await conn.execute(
                        f"UPDATE {batches} SET {c('lease_expires_at')} = {d.lease_expr()} "
                        f"WHERE {c('worker_id')} = ? AND {c('id')} IN ({_marks(len(owned))})",
                        [d.lease_param(lease_s), worker_id, *sorted(owned)],
                    )
                return owned

            owned = await self._tx(work)
            lost.extend(b for b in chunk if b not in owned)
        return lost

    async def batch_items(
        self, batch_id: str, *, state: str | None = None
    ) -> list[tuple[str, str, str, int]]:
        """Return (key, claim_token, custom_id, attempts) of a batch's items (in one state)."""
        c = self._c
        only = f" AND {c('state')} = ?" if state is not None else ""
        sql = (
            f"SELECT {c('source_key')}, {c('claim_token')}, {c('custom_id')}, {c('attempts')} "
            f"FROM {self.tables.items} WHERE {c('batch_id')} = ?{only} ORDER BY {c('source_key')}"
        )
        params = [batch_id] if state is None else [batch_id, state]

        async def work(conn: Connection) -> list[tuple[Any, ...]]:
            return await conn.fetchall(sql, params)

        return [(str(k), str(t), str(cid), int(a)) for k, t, cid, a in await self._read(work)]

    async def fetch_source_rows(
        self, job: JobSpec, keys: Sequence[str]
    ) -> dict[str, dict[str, Any]]:
        """Return the text columns of these source rows, by key (to rebuild a lost spool).

        Rows whose text cannot be read (not valid UTF-8) are left out, like missing rows.
        """
        rows, unreadable = await self._read_source_rows(job, keys)
        for key in sorted(unreadable)[:5]:
            log.warning("job %s: %s", job.name, unreadable[key])
        return rows

    async def _read_source_rows(
        self, job: JobSpec, keys: Sequence[str]
    ) -> tuple[dict[str, dict[str, Any]], dict[str, str]]:
        """Return (text columns by key, reason by key of rows whose text cannot be read).

        SQLite keeps whatever bytes it is given, and its driver turns invalid UTF-8 into text
        pyodbc cannot decode (or silently drops bytes), so there the text columns are read as
        hex of their bytes and decoded here, row by row (hex, not CAST AS BLOB: the driver
        types a column by its first value and hands later blobs over as "X'..'" text when
        that was NULL). MariaDB stores UTF-16 surrogates in utf8mb4; a
        chunk whose text the driver cannot decode (DataFitError) is read again in halves
        until the bad row stands alone. Either way one bad row is reported, not fatal.
        """
        src = _Source(self.dialect, job)
        out: dict[str, dict[str, Any]] = {}
        unreadable: dict[str, str] = {}
        name = self.dialect.name
        as_bytes = name == "sqlite"
        texts = (
            [f"CASE WHEN {t} IS NULL THEN NULL ELSE hex({t}) END" for t in src.texts]
            if as_bytes
            else src.texts
        )

        async def work(conn: Connection, bound: list[Any]) -> list[tuple[Any, ...]]:
            # SQLite and PostgreSQL take the keys as one JSON parameter (see _json_rows).
            if name == "sqlite":
                in_sql, params = _key_list(self.dialect, bound)
            elif name == "postgresql":
                types = await self._pg_column_types(conn, src)
                key_type = types.get(job.source.key_column.lower(), "text")
                in_sql = (
                    f"(SELECT CAST(x AS {key_type}) FROM "
                    f"json_array_elements_text(CAST(? AS json)) AS t(x))"
                )
                params = [orjson.dumps(bound, default=str).decode()]
            else:
                in_sql, params = f"({_marks(len(bound))})", bound
            # The key as the items table holds it (PostgreSQL's char(n) comes back padded).
            return await conn.fetchall(
                f"SELECT {self.dialect.as_text(src.key)}, {', '.join(texts)} FROM {src.table} "
                f"WHERE {src.key} IN {in_sql}",
                params,
            )

        async def read(chunk: Sequence[str]) -> list[tuple[Any, ...]]:
            bound = [src.bind_key(k) for k in chunk]
            try:
                return await self._read(lambda conn: work(conn, bound))
            except DataFitError as exc:
                if len(chunk) == 1:
                    what = (
                        "source text is not valid UTF-8"
                        if isinstance(exc.__cause__, UnicodeError)
                        else "source row cannot be read"
                    )
                    unreadable[chunk[0]] = f"{what} (key {chunk[0]}): {exc}"
                    return []
            half = len(chunk) // 2
            return [*await read(chunk[:half]), *await read(chunk[half:])]

        size = _JSON_CHUNK if name in ("sqlite", "postgresql") else _CHUNK
        for chunk in _chunks(list(keys), size):
            for row in await read(chunk):
                key = str(row[0])
                values = dict(zip(src.text_names, row[1:], strict=True))
                if as_bytes:
                    try:
                        values = {n: _decoded(n, v) for n, v in values.items()}
                    except _UndecodableTextError as exc:
                        unreadable[key] = f"source text is not valid UTF-8 ({exc}, key {key})"
                        continue
                out[key] = values
        return out, unreadable

    # -- results ------------------------------------------------------------------------------

    async def _pg_column_types(self, conn: Connection, src: _Source) -> dict[str, str]:
        """Column name -> SQL type of a PostgreSQL source table (cached)."""
        if src.table not in self._pg_types:
            rows = await conn.fetchall(
                "SELECT a.attname, format_type(a.atttypid, a.atttypmod) FROM pg_attribute a "
                "WHERE a.attrelid = CAST(? AS regclass) AND a.attnum > 0 "
                "AND NOT a.attisdropped",
                [src.table],
            )
            self._pg_types[src.table] = {str(n).lower(): str(t) for n, t in rows}
        return self._pg_types[src.table]

    async def _apply_pg(
        self,
        conn: Connection,
        job: JobSpec,
        src: _Source,
        rows: Sequence[ApplyRow],
        verdicts: dict[str, tuple[str, str]],
    ) -> set[str]:
        """PostgreSQL: fence and write with JSON-table joins, two statements a chunk.

        The rows travel as one JSON parameter (multi-row VALUES when a value has no JSON
        form): psqlODBC expands every marker into the statement text, so thousands of markers
        cost more than the update itself.
        """
        c, d = self._c, self.dialect
        pairs = {r.key: r.claim_token for r in rows}
        payload = _json_rows(pairs.items())
        if payload is None:
            table = f"(VALUES {', '.join('(?, ?)' for _ in pairs)}) AS v(k, t)"
            params: list[Any] = [x for kt in pairs.items() for x in kt]
        else:
            table, params = f"{self._json_table(['k', 't'])} AS v", [payload]
        done = await conn.fetchall(
            f"UPDATE {self.tables.items} AS i SET {c('state')} = 'done', "
            f"{c('last_error')} = NULL, {c('lease_expires_at')} = NULL, "
            f"{c('updated_at')} = {d.now} FROM {table} "
            f"WHERE i.{c('job')} = ? AND i.{c('source_key')} = v.k "
            f"AND i.{c('claim_token')} = v.t AND {_PG_UNINDEXED.format(c('state'))} "
            f"= 'submitted' RETURNING i.{c('source_key')}",
            [*params, job.name],
        )
        matched = {str(r[0]) for r in done}
        if not matched:
            return matched
        verdicts.update(await self._source_verdicts(conn, job, src, sorted(matched)))
        await self._settle_verdicts(conn, job, verdicts)
        matched -= set(verdicts)
        types = await self._pg_column_types(conn, src)
        groups: dict[tuple[str, ...], list[ApplyRow]] = {}
        for row in rows:
            if row.key in matched:
                groups.setdefault(tuple(sorted(row.values)), []).append(row)
        key_type = types.get(job.source.key_column.lower(), "text")
        for cols, group in groups.items():
            names = ["k", *(f"c{i}" for i in range(len(cols)))]
            col_types = [types.get(col.lower(), "text") for col in cols]
            sets = [
                f"{src.outputs.get(col) or d.quote(col, 'columns')} = "
                f"CAST(v.c{i} AS {col_types[i]})"
                for i, col in enumerate(cols)
            ]
            sets.append(f"{src.processed} = CURRENT_TIMESTAMP")
            # JSON true casts to boolean only; a bool bound for a numeric column is 0/1.
            as_int = [t != "boolean" for t in col_types]
            payload = _json_rows(
                [
                    row.key,
                    *(
                        int(v) if isinstance(v, bool) and as_int[i] else v
                        for i, v in enumerate(row.values[col] for col in cols)
                    ),
                ]
                for row in group
            )
            if payload is None:
                row_marks = "(" + _marks(len(names)) + ")"
                table = (
                    f"(VALUES {', '.join(row_marks for _ in group)}) AS v({', '.join(names)})"
                )
                params = []
                for row in group:
                    params.append(row.key)
                    params.extend(row.values[col] for col in cols)
            else:
                table, params = f"{self._json_table(names)} AS v", [payload]
            await conn.execute(
                f"UPDATE {src.table} AS s SET {', '.join(sets)} FROM {table} "
                f"WHERE s.{src.key} = CAST(v.k AS {key_type})",
                params,
            )
        return matched

    async def _apply_generic(
        self,
        conn: Connection,
        job: JobSpec,
        src: _Source,
        rows: Sequence[ApplyRow],
        verdicts: dict[str, tuple[str, str]],
    ) -> set[str]:
        """Lock and fence the items, update the source rows, then mark items done.

        SQLite updates each group of rows in one UPDATE ... FROM json_each (per-row
        statements only for values with no JSON form); the others run executemany.
        """
        pairs = [(r.key, r.claim_token) for r in rows]
        held = await self._fenced(conn, job.name, pairs, ["submitted"])
        if held:
            verdicts.update(await self._source_verdicts(conn, job, src, sorted(held)))
            await self._settle_verdicts(conn, job, verdicts)
            held = {k: a for k, a in held.items() if k not in verdicts}
        groups: dict[tuple[str, ...], list[ApplyRow]] = {}
        for row in rows:
            if row.key in held:
                groups.setdefault(tuple(sorted(row.values)), []).append(row)
        for cols, group in groups.items():
            params = [(src.bind_key(r.key), *(r.values[col] for col in cols)) for r in group]
            payload = _json_rows(params) if self.dialect.name == "sqlite" else None
            if payload is not None:
                await conn.execute(self.sql_apply_source_json(job, cols), [payload])
                continue
            await conn.executemany(
                self.sql_apply_source(job, cols), [(*p[1:], p[0]) for p in params]
            )
        keys = sorted(held)
        if keys:
            for chunk in _chunks(keys, _JSON_CHUNK if self.dialect.name == "sqlite" else _CHUNK):
                in_params = _key_list(self.dialect, chunk)[1]
                await conn.execute(self.sql_items_done(len(chunk)), [job.name, *in_params])
        return set(held)

    async def apply_results(self, job: JobSpec, rows: Sequence[ApplyRow]) -> ApplyOutcome:
        """Write results to the source rows, set the processed marker and mark items done.

        Chunked transactions; each row is fenced by (key, claim_token, state submitted): a row
        whose item no longer matches is skipped and reported in ``stale``, and its source row is
        not touched. Idempotent: applying the same rows twice applies nothing the second time.
        """
        src = _Source(self.dialect, job)
        width = 2 + max((len(r.values) for r in rows), default=0)
        if self.dialect.name in ("sqlite", "postgresql"):
            size = _JSON_CHUNK  # one JSON parameter per statement (see _json_rows)
        else:
            size = max(1, min(_CHUNK, self.dialect.max_params // width))
        applied, stale = 0, list[str]()
        rejected: list[tuple[str, str]] = []
        skipped: list[tuple[str, str]] = []
        for chunk in _apply_chunks(rows, size):
            matched = await self._apply_part(job, src, chunk, rejected, skipped)
            applied += len(matched)
            refused = {key for key, _ in rejected} | {key for key, _ in skipped}
            stale.extend(r.key for r in chunk if r.key not in matched and r.key not in refused)
        if stale:
            log.warning("job %s: %d stale results fenced out", job.name, len(stale))
        if rejected:
            log.warning(
                "job %s: %d results do not fit their columns (first: %s)",
                job.name, len(rejected), rejected[0][1],
            )
        if skipped:
            log.warning(
                "job %s: %d results not written (first: key %s, %s)",
                job.name, len(skipped), skipped[0][0], skipped[0][1],
            )
        return ApplyOutcome(applied=applied, stale=stale, rejected=rejected, skipped=skipped)

    async def _apply_part(
        self,
        job: JobSpec,
        src: _Source,
        chunk: Sequence[ApplyRow],
        rejected: list[tuple[str, str]],
        skipped: list[tuple[str, str]] | None = None,
    ) -> set[str]:
        """Apply a chunk in one transaction; on a value that does not fit, split it.

        The database refuses the whole statement for one bad value (and names no row), so
        the halves are applied apart until each refused row stands alone; those go to
        ``rejected`` as (key, reason) and every other row is applied. Returns matched keys.
        """
        verdicts: dict[str, tuple[str, str]] = {}  # key -> (state, reason): not written

        async def work(conn: Connection) -> set[str]:
            verdicts.clear()  # a retried transaction decides again
            if self.dialect.name == "postgresql":
                matched = await self._apply_pg(conn, job, src, chunk, verdicts)
            else:
                matched = await self._apply_generic(conn, job, src, chunk, verdicts)
            unwritten = await self._unwritten(conn, job, src, sorted(matched))
            if unwritten:
                raise _SourceNotWrittenError(unwritten)  # rolls the items back too
            return matched

        try:
            matched = await self._tx(work)
            if skipped is not None:
                skipped.extend((key, reason) for key, (_state, reason) in verdicts.items())
            return matched
        except _SourceNotWrittenError as exc:
            missing = exc.keys
            log.warning("job %s: %d source rows not written by their UPDATE; retried",
                        job.name, len(missing))
            rejected.extend((key, _NOT_WRITTEN) for key in sorted(missing))
            rest = [row for row in chunk if row.key not in missing]
            return await self._apply_part(job, src, rest, rejected, skipped) if rest else set()
        except DataFitError as exc:
            if len(chunk) == 1:
                rejected.append((chunk[0].key, self._misfit_reason(chunk[0], src, exc)))
                return set()
        half = len(chunk) // 2
        first = await self._apply_part(job, src, chunk[:half], rejected, skipped)
        return first | await self._apply_part(job, src, chunk[half:], rejected, skipped)

    def _misfit_reason(self, row: ApplyRow, src: _Source, exc: DataFitError) -> str:
        """Say which column refused the value: MariaDB and SQL Server name it, else guess.

        PostgreSQL's messages name only the type, so the columns whose declared type the
        value cannot fit (from the cached catalog types) are named instead.
        """
        message = str(exc)
        named = _COLUMN_IN_MESSAGE.search(message)
        column = named.group(1).rstrip(".").split(".")[-1].strip("`'\"[]") if named else ""
        if not column:
            types = self._pg_types.get(src.table, {})
            misfits = [col for col, v in row.values.items() if _misfits(types.get(col.lower()), v)]
            column = " or ".join(misfits or sorted(row.values))
        return _error_text(f"value does not fit column {column}: {message}")

    async def _settle(
        self,
        job: JobSpec,
        rows: Sequence[RequeueRow],
        decide: Callable[[RequeueRow, int], tuple[str, int]],
    ) -> RequeueOutcome:
        """Fence rows and set each to (state, attempts) from decide(row, attempts)."""
        c = self._c
        requeued = dead = 0
        stale: list[str] = []
        sql = (
            f"UPDATE {self.tables.items} SET {c('state')} = ?, {c('attempts')} = ?, "
            f"{c('last_error')} = ?, {c('claim_token')} = NULL, {c('worker_id')} = NULL, "
            f"{c('lease_expires_at')} = NULL, {c('batch_id')} = NULL, {c('custom_id')} = NULL, "
            f"{c('updated_at')} = {self.dialect.now} WHERE {c('job')} = ? AND {c('source_key')} = ?"
        )
        for chunk in _chunks(list(rows), _CHUNK):

            async def work(
                conn: Connection, chunk: Sequence[RequeueRow] = chunk
            ) -> list[tuple[str, int, str, str, str]]:
                pairs = [(r.key, r.claim_token) for r in chunk]
                held = await self._fenced(conn, job.name, pairs, ["claimed", "submitted"])
                updates = []
                for row in chunk:
                    if row.key in held:
                        state, attempts = decide(row, held[row.key])
                        updates.append(
                            (state, attempts, _error_text(row.reason), job.name, row.key)
                        )
                await conn.executemany(sql, updates)
                return updates

            updates = await self._tx(work)
            done = {u[4] for u in updates}
            requeued += sum(1 for u in updates if u[0] == "pending")
            dead += sum(1 for u in updates if u[0] == "dead")
            stale.extend(r.key for r in chunk if r.key not in done)
        return RequeueOutcome(requeued=requeued, dead=dead, stale=stale)

    async def requeue(
        self, job: JobSpec, rows: Sequence[RequeueRow], max_attempts: int
    ) -> RequeueOutcome:
        """Send failed rows back to pending with their reason, or dead past max_attempts.

        Fenced like apply_results. ``burn_attempt`` rows count an attempt; the others do not.
        """

        def decide(row: RequeueRow, attempts: int) -> tuple[str, int]:
            attempts += 1 if row.burn_attempt else 0
            return ("dead" if attempts >= max_attempts else "pending"), attempts

        return await self._settle(job, rows, decide)

    async def dead_letter(self, job: JobSpec, rows: Sequence[RequeueRow]) -> RequeueOutcome:
        """Mark rows dead now with their reason (input that can never succeed). Fenced."""
        return await self._settle(job, rows, lambda row, attempts: ("dead", attempts))

    async def retry_dead(self, job: JobSpec) -> int:
        """Move every dead item of the job back to pending with attempts reset; return count."""
        c, d = self._c, self.dialect

        async def work(conn: Connection) -> int:
            return await conn.execute(
                f"UPDATE {self.tables.items} SET {self._to_pending()}, {c('attempts')} = 0, "
                f"{c('updated_at')} = {d.now} WHERE {c('job')} = ? AND {c('state')} = 'dead'",
                [job.name],
            )

        return max(0, await self._tx(work))

    async def counts(self, job: str | None = None) -> dict[str, int]:
        """Items by state (every state present, zero when none)."""
        c = self._c
        where, params = ("", []) if job is None else (f" WHERE {c('job')} = ?", [job])
        sql = f"SELECT {c('state')}, COUNT(*) FROM {self.tables.items}{where} GROUP BY {c('state')}"

        async def work(conn: Connection) -> list[tuple[Any, ...]]:
            return await conn.fetchall(sql, params)

        out = dict.fromkeys(ITEM_STATES, 0)
        for state, n in await self._read(work):
            out[str(state)] = int(n)
        return out

    async def dead_items(self, job: JobSpec, limit: int = 100) -> list[tuple[str, str]]:
        """Return (key, last_error) of dead items."""
        c, d = self._c, self.dialect
        sql = d.limit(
            f"SELECT {d.top(limit)}{c('source_key')}, {c('last_error')} FROM {self.tables.items} "
            f"WHERE {c('job')} = ? AND {c('state')} = 'dead' ORDER BY {c('source_key')}",
            limit,
        )

        async def work(conn: Connection) -> list[tuple[Any, ...]]:
            return await conn.fetchall(sql, [job.name])

        return [(str(k), str(e or "")) for k, e in await self._read(work)]

    # -- workers: heartbeats, and the leases of workers that stopped beating ------------------

    async def heartbeat(self, job: JobSpec, worker_id: str, dead_after_s: float) -> None:
        """Record that this worker is alive for the next ``dead_after_s`` (database clock)."""
        c, d, workers = self._c, self.dialect, self.tables.workers
        expires = d.lease_param(dead_after_s)
        cols = ", ".join(c(n) for n in ("worker_id", "job", "started_at", "heartbeat_at",
                                        "expires_at"))
        values = f"?, ?, {d.now}, {d.now}, {d.lease_expr()}"
        if d.name == "mssql":
            insert = (
                f"INSERT INTO {workers} ({cols}) SELECT {values} WHERE NOT EXISTS "
                f"(SELECT 1 FROM {workers} WITH (UPDLOCK, HOLDLOCK) WHERE {c('worker_id')} = ?)"
            )
            insert_params: list[Any] = [worker_id, job.name, expires, worker_id]
        else:
            insert = d.insert_ignore(workers, cols, f"VALUES ({values})", c("worker_id"))
            insert_params = [worker_id, job.name, expires]

        async def work(conn: Connection) -> None:
            changed = await conn.execute(
                f"UPDATE {workers} SET {c('heartbeat_at')} = {d.now}, "
                f"{c('expires_at')} = {d.lease_expr()}, {c('job')} = ? "
                f"WHERE {c('worker_id')} = ?",
                [expires, job.name, worker_id],
            )
            if changed <= 0:
                # No row yet (or MariaDB counting an unchanged row): insert, never twice.
                await conn.execute(insert, insert_params)

        await self._tx(work)

    async def forget_worker(self, worker_id: str) -> None:
        """Delete this worker's heartbeat row: it has stopped and handed over its work."""
        c = self._c

        async def work(conn: Connection) -> None:
            await conn.execute(
                f"DELETE FROM {self.tables.workers} WHERE {c('worker_id')} = ?", [worker_id]
            )

        await self._tx(work)

    def _alive_workers(self) -> str:
        """Subquery of the ids of workers whose heartbeat is current."""
        c = self._c
        return (
            f"SELECT {c('worker_id')} FROM {self.tables.workers} "
            f"WHERE {c('expires_at')} > {self.dialect.now}"
        )

    async def expire_dead_workers(
        self, job: JobSpec, worker_id: str, batch_states: Sequence[str]
    ) -> tuple[int, int]:
        """End the leases of other workers' claims and batches when their heartbeat stopped.

        A worker with no current heartbeat row is dead: it was killed, or it stopped and
        deleted its row after handing its work over. Its claims become claimable and its
        batches adoptable at once instead of when their leases end. Returns (claims, batches)
        whose leases were ended; the dead workers' rows are deleted in the same transaction.
        """
        c, d = self._c, self.dialect
        not_alive = (
            f"{c('lease_expires_at')} > {d.now} AND {c('worker_id')} IS NOT NULL "
            f"AND {c('worker_id')} <> ? AND {c('worker_id')} NOT IN ({self._alive_workers()})"
        )
        ended = f"{c('lease_expires_at')} = {d.now}, {c('updated_at')} = {d.now}"

        async def work(conn: Connection) -> tuple[int, int]:
            claims = await conn.execute(
                f"UPDATE {self.tables.items} SET {ended} WHERE {c('job')} = ? "
                f"AND {c('state')} = 'claimed' AND {not_alive}",
                [job.name, worker_id],
            )
            batches = 0
            if batch_states:
                batches = await conn.execute(
                    f"UPDATE {self.tables.batches} SET {ended} WHERE {c('job')} = ? "
                    f"AND {c('state')} IN ({_marks(len(batch_states))}) AND {not_alive}",
                    [job.name, *batch_states, worker_id],
                )
            await conn.execute(
                f"DELETE FROM {self.tables.workers} WHERE {c('expires_at')} <= {d.now}"
            )
            return max(0, claims), max(0, batches)

        return await self._tx(work)

    async def held_elsewhere(
        self, job: JobSpec, worker_id: str, batch_states: Sequence[str]
    ) -> list[Holding]:
        """Return the job's unfinished claims and batches held by workers other than this one.

        Each holder is alive when its heartbeat is current and its lease has not run out;
        anything else is an orphan that this or another worker is about to adopt.
        """
        c, d = self._c, self.dialect
        alive = (
            f"CASE WHEN w.{c('worker_id')} IS NOT NULL AND x.{c('lease_expires_at')} > {d.now} "
            f"THEN 1 ELSE 0 END"
        )
        join = (
            f"LEFT JOIN {self.tables.workers} w ON w.{c('worker_id')} = x.{c('worker_id')} "
            f"AND w.{c('expires_at')} > {d.now}"
        )
        other = f"(x.{c('worker_id')} IS NULL OR x.{c('worker_id')} <> ?)"
        batches_sql = (
            f"SELECT x.{c('id')}, x.{c('worker_id')}, {alive}, w.{c('heartbeat_at')} "
            f"FROM {self.tables.batches} x "
            f"{join} WHERE x.{c('job')} = ? AND x.{c('state')} IN ({_marks(len(batch_states))}) "
            f"AND {other}"
        )
        claims_sql = (
            f"SELECT x.{c('worker_id')}, {alive}, COUNT(*), MAX(w.{c('heartbeat_at')}) "
            f"FROM {self.tables.items} x {join} "
            f"WHERE x.{c('job')} = ? AND x.{c('state')} = 'claimed' AND {other} "
            f"GROUP BY x.{c('worker_id')}, {alive}"
        )

        async def work(conn: Connection) -> tuple[list[tuple[Any, ...]], ...]:
            held = (
                await conn.fetchall(batches_sql, [job.name, *batch_states, worker_id])
                if batch_states else []
            )
            claims = await conn.fetchall(claims_sql, [job.name, worker_id])
            sizes: list[tuple[Any, ...]] = []
            for chunk in _chunks([str(r[0]) for r in held], _CHUNK):
                in_sql, in_params = _key_list(d, chunk)
                sizes.extend(await conn.fetchall(
                    f"SELECT {c('batch_id')}, COUNT(*) FROM {self.tables.items} "
                    f"WHERE {c('job')} = ? AND {c('state')} = 'submitted' "
                    f"AND {c('batch_id')} IN {in_sql} GROUP BY {c('batch_id')}",
                    [job.name, *in_params],
                ))
            return held, claims, sizes

        held, claims, sizes = await self._read(work)
        rows_of = {str(r[0]): int(r[1]) for r in sizes}
        tally: dict[tuple[str | None, bool], list[int]] = {}
        beats: dict[str | None, datetime | None] = {}

        def add(owner: Any, is_alive: Any, batches: int, rows: int, beat: Any) -> None:
            name = None if owner is None else str(owner)
            entry = tally.setdefault((name, bool(is_alive)), [0, 0])
            entry[0] += batches
            entry[1] += rows
            beat_at, best = _to_datetime(beat), beats.get(name)
            if beat_at is not None and (best is None or beat_at > best):
                beats[name] = beat_at

        for batch_id, owner, is_alive, beat in held:
            add(owner, is_alive, 1, rows_of.get(str(batch_id), 0), beat)
        for owner, is_alive, count, beat in claims:
            add(owner, is_alive, 0, int(count), beat)
        return [
            Holding(owner, is_alive, batches, rows, beats.get(owner))
            for (owner, is_alive), (batches, rows) in sorted(
                tally.items(), key=lambda kv: (kv[0][0] or "", kv[0][1])
            )
        ]

    # -- trust no single "ok" (guarantees 7 and 8) ---------------------------------------------

    async def _unwritten(
        self, conn: Connection, job: JobSpec, src: _Source, keys: Sequence[str]
    ) -> set[str]:
        """Keys among ``keys`` whose source row does not carry the processed marker.

        Read inside the apply transaction, after the UPDATE: a driver that reports a write
        which changed nothing as a warning (MariaDB Connector/ODBC, SQLSTATE 01000) or a row
        deleted meanwhile shows up here, so its item is never marked done without its result.
        """
        found: set[str] = set()
        for chunk in _chunks(list(keys), _CHUNK):
            in_sql, in_params = await self._source_in(conn, job, src, chunk)
            rows = await conn.fetchall(
                f"SELECT {self.dialect.as_text(src.key)} FROM {src.table} "
                f"WHERE {src.key} IN {in_sql} AND {src.processed} IS NOT NULL",
                in_params,
            )
            found.update(str(r[0]) for r in rows)
        return set(keys) - found

    async def unsettled_items(self, batch_id: str) -> list[tuple[str, str, str]]:
        """(key, claim_token, custom_id) of a batch's items still ``submitted``.

        Read on its own connection after the batch's results were applied: any row listed
        here had a transaction that reported success without committing.
        """
        items = await self.batch_items(batch_id, state="submitted")
        return [(key, token, custom_id) for key, token, custom_id, _attempts in items]

    async def reopen_unsettled(self, job: JobSpec) -> list[str]:
        """Set ``applied`` batches that still have ``submitted`` items back to ``finished``.

        The reconciler: such a batch was marked applied although some of its results never
        landed (a COMMIT reported but not done, by a release before this check existed).
        Finished batches are adopted and applied again; the fence skips rows already done.
        """
        c, batches, items = self._c, self.tables.batches, self.tables.items
        find = (
            f"SELECT b.{c('id')} FROM {batches} b WHERE b.{c('job')} = ? "
            f"AND b.{c('state')} = 'applied' AND EXISTS (SELECT 1 FROM {items} i "
            f"WHERE i.{c('batch_id')} = b.{c('id')} AND i.{c('state')} = 'submitted')"
        )

        async def work(conn: Connection) -> list[str]:
            ids = [str(r[0]) for r in await conn.fetchall(find, [job.name])]
            for chunk in _chunks(ids, _CHUNK):
                await conn.execute(
                    f"UPDATE {batches} SET {c('state')} = 'finished', "
                    f"{c('lease_expires_at')} = NULL, {c('updated_at')} = {self.dialect.now} "
                    f"WHERE {c('state')} = 'applied' AND {c('id')} IN ({_marks(len(chunk))})",
                    list(chunk),
                )
            return ids

        return await self._tx(work)

    async def note_apply_failure(self, batch_id: str, reason: str, limit: int) -> int:
        """Count one failed apply of a batch; quarantine it at ``limit``. Returns the count.

        The count lives in the batch's error text ("apply failed N times: ..."), so it
        survives restarts and every worker sees it, without a schema change. The lease is
        left alone: its owner retries it (or hands it over when stopping); a quarantined
        batch is adopted by no one.
        """
        c = self._c

        async def work(conn: Connection) -> int:
            rows = await conn.fetchall(
                f"SELECT {c('error')}, {c('state')} FROM {self.tables.batches}"
                f"{self.dialect.lock_hint} WHERE {c('id')} = ?{self.dialect.lock_suffix}",
                [batch_id],
            )
            if not rows:
                return 0
            previous = _APPLY_FAILED.match(str(rows[0][0] or ""))
            count = (int(previous.group(1)) if previous else 0) + 1
            state = "quarantined" if count >= limit else str(rows[0][1])
            prefix = "quarantined: " if state == "quarantined" else ""
            text = f"{prefix}apply failed {count} times: {reason}"
            await conn.execute(
                f"UPDATE {self.tables.batches} SET {c('state')} = ?, {c('error')} = ?, "
                f"{c('updated_at')} = {self.dialect.now} WHERE {c('id')} = ?",
                [state, _error_text(text), batch_id],
            )
            return count

        return await self._tx(work)

    async def quarantine_batch(self, batch_id: str, reason: str) -> None:
        """Hold a batch with its reason: no worker adopts it until ``release_batch``."""
        await self.update_batch(batch_id, state="quarantined", error=f"quarantined: {reason}",
                                lease_expires_at=None)

    async def release_batch(self, batch_id: str) -> BatchRecord:
        """Put a quarantined batch back to ``finished`` (count cleared) so it is applied again."""
        record = await self.get_batch(batch_id) or await self.find_batch_by_remote_id(batch_id)
        if record is None:
            raise StoreError(f"no batch {batch_id!r} in the batches table")
        if record.state != "quarantined":
            raise StoreError(f"batch {record.id} is {record.state}, not quarantined")
        await self.update_batch(record.id, state="finished", error=None, worker_id=None,
                                lease_expires_at=None)
        found = await self.get_batch(record.id)
        assert found is not None
        return found

    # -- keys: one key, one row ---------------------------------------------------------------

    async def _source_in(
        self, conn: Connection, job: JobSpec, src: _Source, keys: Sequence[str]
    ) -> tuple[str, list[Any]]:
        """Return an IN list matching these keys against the source key column, and params."""
        if self.dialect.name == "postgresql":
            types = await self._pg_column_types(conn, src)
            key_type = types.get(job.source.key_column.lower(), "text")
            return (
                f"(SELECT CAST(x AS {key_type}) FROM "
                f"json_array_elements_text(CAST(? AS json)) AS t(x))",
                [orjson.dumps(list(keys)).decode()],
            )
        bound = [src.bind_key(k) for k in keys]
        if self.dialect.name == "sqlite":
            return _key_list(self.dialect, bound)
        return f"({_marks(len(bound))})", bound

    async def _source_verdicts(
        self, conn: Connection, job: JobSpec, src: _Source, keys: Sequence[str]
    ) -> dict[str, tuple[str, str]]:
        """Lock these keys' source rows; return key -> (state, reason) of those not to write.

        A result is written only where exactly one source row has the key (compared the way
        the source column compares: case, accents, trailing spaces) and that row still
        matches the job's pending filter. The rows stay locked until the apply commits, so
        another writer cannot change them in between. One statement per chunk; only when a
        row comes back that is not exactly one of the keys (a case-insensitive or PAD SPACE
        match) or a key comes back twice are those keys counted one by one.
        """
        d = self.dialect
        pending = f"CASE WHEN s.{src.processed} IS NULL{src.filter} THEN 1 ELSE 0 END"
        verdicts: dict[str, tuple[str, str]] = {}
        for chunk in _chunks(list(keys), _JSON_CHUNK if d.name in ("sqlite", "postgresql")
                             else _CHUNK):
            in_sql, params = await self._source_in(conn, job, src, chunk)
            rows = await conn.fetchall(
                f"SELECT {d.as_text('s.' + src.key)}, {pending} FROM {src.table} s{d.lock_hint} "
                f"WHERE s.{src.key} IN {in_sql}{d.lock_suffix}",
                params,
            )
            wanted = set(chunk)
            found: Counter[str] = Counter()
            still_pending: dict[str, bool] = {}
            for text, flag in rows:
                found[str(text)] += 1
                still_pending[str(text)] = int(flag) == 1
            if any(text not in wanted for text in found):
                suspects = list(chunk)
            else:
                suspects = [k for k in chunk if found[k] > 1]
            counts = {k: (found[k], int(still_pending.get(k, False))) for k in chunk}
            for key in suspects:
                counts[key] = await self._count_key(conn, job, src, key, pending)
            for key, (rows_with_key, pending_rows) in counts.items():
                if rows_with_key > 1:
                    verdicts[key] = (
                        "dead",
                        f"key matches {rows_with_key} source rows; not written "
                        f"(source.key_column {job.source.key_column!r} must be unique)",
                    )
                elif rows_with_key == 0:
                    verdicts[key] = ("dead", "source row not found when applying")
                elif not pending_rows:
                    verdicts[key] = ("done", "skipped: row no longer pending")
        return verdicts

    async def _count_key(
        self, conn: Connection, job: JobSpec, src: _Source, key: str, pending: str
    ) -> tuple[int, int]:
        """Return (source rows equal to key, of which still pending), under the row locks."""
        if self.dialect.name == "postgresql":
            types = await self._pg_column_types(conn, src)
            mark = f"CAST(? AS {types.get(job.source.key_column.lower(), 'text')})"
            param: Any = key
        else:
            mark, param = "?", src.bind_key(key)
        rows = await conn.fetchall(
            f"SELECT COUNT(*), SUM({pending}) FROM {src.table} s WHERE s.{src.key} = {mark}",
            [param],
        )
        return int(rows[0][0] or 0), int(rows[0][1] or 0)

    async def _settle_verdicts(
        self, conn: Connection, job: JobSpec, verdicts: dict[str, tuple[str, str]]
    ) -> None:
        """Set the items of keys not written to their verdict's state and reason."""
        c = self._c
        groups: dict[tuple[str, str], list[str]] = {}
        for key, verdict in verdicts.items():
            groups.setdefault(verdict, []).append(key)
        for (state, reason), keys in groups.items():
            await self._set_items(
                conn, job.name, keys,
                f"{c('state')} = ?, {c('last_error')} = ?, {c('lease_expires_at')} = NULL",
                [state, _error_text(reason)],
            )

    async def reopen_reset(self, job: JobSpec) -> int:
        """Send done items whose source row is pending again back to pending; return how many.

        An item becomes ``done`` only in the transaction that writes its source row (or, for
        a row another writer had already taken, when that row no longer matched the pending
        filter), so a done item whose source row matches the pending filter now was reset by
        someone after that commit: it is processed again, attempts from zero. A write that
        has not landed yet has no done item: its item is still ``submitted``.
        """
        d, c, src = self.dialect, self._c, _Source(self.dialect, job)
        key_text = d.as_text(f"s.{src.key}")
        select = (
            f"SELECT {key_text} FROM {src.table} s WHERE s.{src.processed} IS NULL{src.filter} "
            f"AND EXISTS (SELECT 1 FROM {self.tables.items} i WHERE i.{c('job')} = ? "
            f"AND i.{c('source_key')} = {key_text} AND i.{c('state')} = 'done')"
        )

        async def work(conn: Connection) -> int:
            keys = [str(r[0]) for r in await conn.fetchall(select, [job.name])]
            for chunk in _chunks(keys, _CHUNK):
                in_sql, in_params = _key_list(d, chunk)
                await conn.execute(
                    f"UPDATE {self.tables.items} SET {self._to_pending()}, {c('attempts')} = 0, "
                    f"{c('last_error')} = ?, {c('updated_at')} = {d.now} "
                    f"WHERE {c('job')} = ? AND {c('state')} = 'done' "
                    f"AND {c('source_key')} IN {in_sql}",
                    ["reopened: source row pending again", job.name, *in_params],
                )
            return len(keys)

        reopened = await self._tx(work)
        if reopened:
            log.info("job %s: %d done rows are pending again in the source; reopened",
                     job.name, reopened)
        return reopened

    async def key_problems(self, job: JobSpec) -> list[str]:
        """Say why the key column cannot identify rows exactly (empty when it can).

        Unique when a unique or primary-key constraint covers exactly that column; otherwise
        the rows are grouped by key (in the column's own collation) and shared values named.
        Pending keys longer than the items table holds are named with the limit.
        """
        d, src = self.dialect, _Source(self.dialect, job)
        problems: list[str] = []
        name = f"source.key_column: {job.source.key_column!r} of {job.source.table!r}"
        groups = (
            f"SELECT s.{src.key}, COUNT(*) FROM {src.table} s WHERE s.{src.key} IS NOT NULL "
            f"GROUP BY s.{src.key} HAVING COUNT(*) > 1"
        )
        length = d.char_length(f"s.{src.key}")
        pending = f"s.{src.processed} IS NULL{src.filter}"

        async def work(conn: Connection) -> None:
            if not await self._key_is_unique(conn, job, src):
                total = await conn.fetchall(f"SELECT COUNT(*) FROM ({groups}) g", [])
                if int(total[0][0]):
                    shown = await conn.fetchall(
                        d.limit(f"{groups.replace('SELECT ', 'SELECT ' + d.top(5), 1)} "
                                f"ORDER BY COUNT(*) DESC", 5), [])
                    listed = ", ".join(f"{str(k)!r} x{int(n)}" for k, n in shown)
                    problems.append(
                        f"{name} is not unique: {int(total[0][0])} values are shared by more "
                        f"than one row (e.g. {listed}); each key must identify exactly one row "
                        "(add a unique constraint or choose another key column)"
                    )
            longest = await conn.fetchall(
                f"SELECT MAX({length}) FROM {src.table} s WHERE {pending}", []
            )
            if int(longest[0][0] or 0) > KEY_CHARS:
                example = await conn.fetchall(
                    d.limit(f"SELECT {d.top(1)}s.{src.key}, {length} FROM {src.table} s "
                            f"WHERE {pending} ORDER BY {length} DESC", 1), [])
                key = str(example[0][0])
                problems.append(
                    f"{name}: key {key[:40]!r}... is {int(example[0][1])} characters; the "
                    f"engine's items table holds keys of at most {KEY_CHARS}"
                )

        await self._read(work)
        return problems

    async def _key_is_unique(self, conn: Connection, job: JobSpec, src: _Source) -> bool:
        """Whether a unique or primary-key constraint covers exactly the key column."""
        key = job.source.key_column
        if self.dialect.name == "postgresql":
            rows = await conn.fetchall(
                "SELECT 1 FROM pg_index x JOIN pg_attribute a ON a.attrelid = x.indrelid "
                "AND a.attnum = x.indkey[0] WHERE x.indrelid = CAST(? AS regclass) "
                "AND x.indisunique AND x.indnatts = 1 AND x.indpred IS NULL "
                "AND x.indexprs IS NULL AND a.attname = ?",
                [src.table, key],
            )
            return bool(rows)
        if self.dialect.name == "mysql":
            schema, table = _schema_and_table(job.source.table)
            rows = await conn.fetchall(
                "SELECT INDEX_NAME FROM information_schema.STATISTICS "
                "WHERE TABLE_SCHEMA = COALESCE(?, DATABASE()) AND TABLE_NAME = ? "
                "AND NON_UNIQUE = 0 GROUP BY INDEX_NAME HAVING COUNT(*) = 1 "
                "AND LOWER(MAX(COLUMN_NAME)) = LOWER(?) AND MAX(SUB_PART) IS NULL",
                [schema, table, key],
            )
            return bool(rows)
        if self.dialect.name == "sqlite" and "." not in job.source.table:
            for index in await conn.fetchall(f"PRAGMA index_list({src.table})", []):
                _seq, index_name, unique, _origin, partial = index[:5]
                if not int(unique) or int(partial):
                    continue
                quoted = '"' + str(index_name).replace('"', '""') + '"'
                cols = await conn.fetchall(f"PRAGMA index_info({quoted})", [])
                if len(cols) == 1 and str(cols[0][2]).lower() == key.lower():
                    return True
            info = await conn.fetchall(f"PRAGMA table_info({src.table})", [])
            pks = [r for r in info if int(r[5])]
            # INTEGER PRIMARY KEY is the rowid: unique, and in no index_list.
            return (len(pks) == 1 and str(pks[0][1]).lower() == key.lower()
                    and str(pks[0][2]).upper() == "INTEGER")
        return False  # SQL Server, schema-qualified SQLite: the duplicate count decides

    # -- jobs: a job is one thing -------------------------------------------------------------

    def job_identity(self, job: JobSpec) -> dict[str, str]:
        """Return what makes the job this job: table, key, output columns, pending filter."""
        src = job.source
        pending = f"{src.processed_column} IS NULL"
        if src.extra_filter:
            pending += f" AND ({src.extra_filter})"
        return {
            "source_table": src.table,
            "key_column": src.key_column,
            "output_columns": ", ".join(sorted(job.output_columns, key=str.lower)),
            "pending_filter": pending,
        }

    def _same_identity(self, a: dict[str, str], b: dict[str, str]) -> bool:
        """Whether two recorded identities are one (names compared as the database does)."""
        return a["pending_filter"] == b["pending_filter"] and all(
            self._same_name(a[n], b[n]) for n in ("source_table", "key_column", "output_columns")
        )

    def _same_name(self, a: str, b: str) -> bool:
        """Compare identifiers the way the database does (PostgreSQL keeps quoted case)."""
        return a == b if self.dialect.name == "postgresql" else a.lower() == b.lower()

    async def job_problems(self, job: JobSpec, *, record: bool, migrate: bool = False,
                           ) -> list[str]:
        """Check (and with ``record``, record) the job's identity; return what is wrong.

        The first run of a job records its identity. The same name with another identity is
        refused, naming both, unless ``migrate`` (then refused only while rows are in
        flight, whose requests came from the old identity). Another job that writes one of
        the same columns of the same table is refused while it has rows in flight.
        """
        c, d = self._c, self.dialect
        mine = self.job_identity(job)
        names = list(mine)
        cols = ", ".join(c(n) for n in ("name", *names))
        select = f"SELECT {cols} FROM {self.tables.jobs}"
        insert = d.insert_ignore(
            self.tables.jobs, f"{cols}, {c('created_at')}, {c('updated_at')}",
            f"VALUES ({_marks(len(names) + 1)}, {d.now}, {d.now})", c("name"),
        )
        update = (
            f"UPDATE {self.tables.jobs} SET "
            + ", ".join(f"{c(n)} = ?" for n in names)
            + f", {c('updated_at')} = {d.now} WHERE {c('name')} = ?"
        )
        in_flight = (
            f"SELECT COUNT(*) FROM {self.tables.items} WHERE {c('job')} = ? "
            f"AND {c('state')} IN ('claimed', 'submitted')"
        )

        def describe(identity: dict[str, str]) -> str:
            return (f"table {identity['source_table']}, key {identity['key_column']}, "
                    f"columns {identity['output_columns']}, pending when "
                    f"{identity['pending_filter']}")

        async def work(conn: Connection) -> list[str]:
            problems: list[str] = []
            rows = {str(r[0]): dict(zip(names, map(str, r[1:]), strict=True))
                    for r in await conn.fetchall(select, [])}
            recorded = rows.pop(job.name, None)
            if recorded is None and record:
                await conn.execute(insert, [job.name, *mine.values()])
            elif recorded is not None and not self._same_identity(recorded, mine):
                if not migrate:
                    problems.append(
                        f"job {job.name!r} was recorded as {describe(recorded)}; this job "
                        f"file says {describe(mine)}. Give this job its own name, or pass "
                        "--migrate to make this the job's identity from now on"
                    )
                else:
                    busy = int((await conn.fetchall(in_flight, [job.name]))[0][0])
                    if busy:
                        problems.append(
                            f"job {job.name!r}: cannot migrate to {describe(mine)} while "
                            f"{busy} rows of its old identity are in flight; let them finish"
                        )
                    elif record:
                        await conn.execute(update, [*mine.values(), job.name])
                        log.warning("job %s: identity migrated from %s to %s",
                                    job.name, describe(recorded), describe(mine))
            wanted = {col.lower() for col in job.output_columns}
            for other, identity in sorted(rows.items()):
                if not self._same_name(identity["source_table"], mine["source_table"]):
                    continue
                theirs = {col.strip() for col in identity["output_columns"].split(",")}
                shared = sorted(col for col in theirs if col.lower() in wanted)
                if not shared:
                    continue
                busy = int((await conn.fetchall(in_flight, [other]))[0][0])
                if busy:
                    problems.append(
                        f"job {other!r} writes the same columns ({', '.join(shared)}) of "
                        f"{mine['source_table']} and is active ({busy} rows in flight); "
                        f"run job {job.name!r} when it has finished"
                    )
            return problems

        return await self._tx(work)
