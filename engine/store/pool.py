"""The one aioodbc wrapper: a small connection pool with the hygiene aioodbc's own lacks.

aioodbc 0.5 opens connections in the executor we give it, but its pool neither rolls back nor
throws away a connection whose call failed or was cancelled. So we keep our own pool of
aioodbc connections and run each statement on the raw pyodbc connection in our own
ThreadPoolExecutor (more workers than connections, so a connection still finishing a
cancelled call never starves the others). Rules:

- a query timeout is set on each new connection (server-side where the driver ignores ODBC's);
- a connection goes back to the pool only after a clean commit or rollback;
- a connection whose call raised or was cancelled is cancelled (SQLCancel), waited for and
  closed in the background, never reused.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import logging
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager, suppress
from typing import Any, TypeVar

import aioodbc
import pyodbc

from engine.errors import DataFitError, StoreError
from engine.store.dialects import Dialect

__all__ = ["Connection", "Pool"]

log = logging.getLogger("engine.store.pool")
T = TypeVar("T")


class Connection:
    """One pooled connection; every call runs in the pool's executor and raises StoreError."""

    def __init__(self, pool: Pool, aconn: Any, raw: Any) -> None:
        self._pool = pool
        self._aconn = aconn  # aioodbc.Connection, owner of the close
        self.raw = raw  # the pyodbc connection
        self.broken = False
        self._cursor: Any = None
        self._inflight: concurrent.futures.Future[Any] | None = None
        self.in_transaction = False

    async def _call(self, fn: Callable[[], T]) -> T:
        """Run fn in the executor; on error or cancellation mark this connection broken."""
        if self.broken:
            raise StoreError("connection already failed; it cannot be reused")
        future = self._pool.executor.submit(fn)
        self._inflight = future
        try:
            return await asyncio.wrap_future(future)
        except asyncio.CancelledError:
            self.broken = True
            cursor = self._cursor
            if cursor is not None:
                with suppress(pyodbc.Error):
                    cursor.cancel()  # SQLCancel is the one call ODBC allows from another thread
            raise
        except pyodbc.Error as exc:
            self.broken = True
            raise self._pool.dialect.classify(exc) from exc
        except (UnicodeDecodeError, UnicodeEncodeError) as exc:
            # pyodbc converting text that is not valid in its encoding (SQLite keeps any
            # bytes): a fact about one value, not a failed database, so classify it as such.
            self.broken = True
            raise DataFitError(
                f"{self._pool.dialect.name}: text is not valid {exc.encoding} ({exc.reason})"
            ) from exc
        except BaseException:
            self.broken = True
            raise

    def _run(self, sql: str, params: Sequence[Any], fetch: bool) -> tuple[int, list[Any]]:
        """Execute one statement on a fresh cursor (executor thread)."""
        cursor = self.raw.cursor()
        self._cursor = cursor
        try:
            cursor.execute(sql, *params) if params else cursor.execute(sql)
            # psqlODBC describes no columns for UPDATE ... RETURNING that matched no row.
            has_rows = fetch and cursor.description is not None
            rows = [tuple(r) for r in cursor.fetchall()] if has_rows else []
            return cursor.rowcount, rows
        finally:
            self._cursor = None
            cursor.close()

    def _run_many(self, sql: str, seq: Sequence[Sequence[Any]]) -> None:
        """Executemany on a fresh cursor (executor thread)."""
        cursor = self.raw.cursor()
        self._cursor = cursor
        try:
            cursor.fast_executemany = self._pool.fast_executemany
            cursor.executemany(sql, [tuple(p) for p in seq])
        finally:
            self._cursor = None
            cursor.close()

    async def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        """Run a statement and return its rowcount."""
        rowcount, _ = await self._call(lambda: self._run(sql, params, False))
        return int(rowcount)

    async def fetchall(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """Run a query and return every row as a tuple."""
        _, rows = await self._call(lambda: self._run(sql, params, True))
        return rows

    async def executemany(self, sql: str, seq: Sequence[Sequence[Any]]) -> None:
        """Run one statement for each parameter tuple."""
        if seq:
            await self._call(lambda: self._run_many(sql, seq))

    async def describe(self, sql: str) -> list[str]:
        """Return the column names a query would produce (runs it; use WHERE 1 = 0)."""

        def run() -> list[str]:
            cursor = self.raw.cursor()
            self._cursor = cursor
            try:
                cursor.execute(sql)
                return [str(d[0]) for d in cursor.description or ()]
            finally:
                self._cursor = None
                cursor.close()

        return await self._call(run)

    async def begin(self) -> None:
        """Open a transaction (explicit BEGIN where the connection runs in autocommit)."""
        begin_sql = self._pool.dialect.begin_sql
        if begin_sql:
            await self.execute(begin_sql)
        self.in_transaction = True

    async def commit(self) -> None:
        """Commit the open transaction."""
        if self._pool.dialect.autocommit:
            await self.execute("COMMIT")
        else:
            await self._call(self.raw.commit)
        self.in_transaction = False

    async def rollback(self) -> None:
        """Roll back whatever is open."""
        if self._pool.dialect.autocommit:
            if self.in_transaction:
                await self.execute("ROLLBACK")
        else:
            await self._call(self.raw.rollback)
        self.in_transaction = False

    async def close(self) -> None:
        """Wait for a call still running (after SQLCancel) and close the connection."""
        inflight = self._inflight
        if inflight is not None and not inflight.done():
            with suppress(Exception):
                await asyncio.wrap_future(inflight)
        await self._aconn.close()


class Pool:
    """At most ``size`` connections; acquire() hands out a healthy one and takes it back."""

    def __init__(self, dialect: Dialect, dsn: str, size: int, query_timeout_s: int) -> None:
        self.dialect = dialect
        self._dsn = dialect.prepare_dsn(dsn, query_timeout_s)
        self._size = size
        self._timeout_s = query_timeout_s
        # Each connection may have one abandoned call still running plus its closer.
        self.executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=2 * size + 2, thread_name_prefix="engine-db"
        )
        self.fast_executemany = "odbc driver" in dsn.lower() and "sql server" in dsn.lower()
        self._free: collections.deque[Connection] = collections.deque()
        self._slots = asyncio.Semaphore(size)
        self._closers: set[asyncio.Task[None]] = set()
        self._closed = False
        self.discarded = 0  # connections closed after a failure or cancellation

    async def _connect(self) -> Connection:
        """Open one connection and prepare its session."""
        holder: list[Any] = []

        async def keep(raw: Any) -> None:
            holder.append(raw)

        try:
            aconn = await aioodbc.connect(
                dsn=self._dsn,
                autocommit=self.dialect.autocommit,
                executor=self.executor,
                after_created=keep,
            )
        except pyodbc.Error as exc:
            raise self.dialect.classify(exc) from exc
        conn = Connection(self, aconn, holder[0])
        try:
            await conn._call(lambda: self._prepare(conn.raw))
        except BaseException:
            await aconn.close()
            raise
        return conn

    def _prepare(self, raw: Any) -> None:
        """Set encodings, query timeout and session settings (executor thread)."""
        if self.dialect.utf8_everywhere:
            raw.setencoding(encoding="utf-8")
            raw.setdecoding(pyodbc.SQL_CHAR, encoding="utf-8")
            raw.setdecoding(pyodbc.SQL_WCHAR, encoding="utf-8")
        if self._timeout_s:
            # Not every driver takes the ODBC attribute; those get a server-side setting below.
            with suppress(pyodbc.Error):
                raw.timeout = self._timeout_s
        # Always: some statements are not about the timeout (MariaDB's strict mode).
        statements = self.dialect.session_sql(self._timeout_s)
        statements += self.dialect.zone_sql()
        if statements:
            cursor = raw.cursor()
            try:
                for sql in statements:
                    cursor.execute(sql)
            finally:
                cursor.close()
            if not self.dialect.autocommit:
                raw.commit()

    @asynccontextmanager
    async def acquire(self) -> AsyncIterator[Connection]:
        """Lend a connection; it returns only when it ended clean, else it is discarded."""
        if self._closed:
            raise StoreError("the store is closed")
        await self._slots.acquire()
        conn: Connection | None = None
        try:
            conn = self._free.popleft() if self._free else await self._connect()
            yield conn
        except BaseException:
            if conn is not None:
                conn.broken = True
            raise
        else:
            if conn.in_transaction or not self.dialect.autocommit:
                try:
                    await conn.rollback()  # nothing may leak into the next borrower's work
                except StoreError as exc:
                    # The caller's work is already done (maybe committed): raising here would
                    # make it retry. Dropping the connection is enough.
                    log.warning("rollback before reuse failed; connection dropped: %s", exc)
        finally:
            if conn is not None:
                if conn.broken or self._closed:
                    self._discard(conn)
                else:
                    self._free.append(conn)
            self._slots.release()

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[Connection]:
        """Lend a connection inside one transaction: committed on success, else discarded."""
        async with self.acquire() as conn:
            await conn.begin()
            yield conn
            await conn.commit()

    def _discard(self, conn: Connection) -> None:
        """Close a connection in the background (it may still be finishing a cancelled call)."""
        self.discarded += 1
        task = asyncio.get_running_loop().create_task(self._close_quietly(conn))
        self._closers.add(task)
        task.add_done_callback(self._closers.discard)

    async def _close_quietly(self, conn: Connection) -> None:
        """Close, logging instead of raising (the connection is already given up)."""
        try:
            await conn.close()
        except Exception as exc:
            log.debug("closing a discarded connection failed: %s", exc)

    async def drain(self) -> None:
        """Wait until every discarded connection is closed."""
        while self._closers:
            await asyncio.gather(*list(self._closers), return_exceptions=True)

    async def close(self) -> None:
        """Close every connection and the executor; idempotent."""
        if self._closed:
            return
        self._closed = True
        try:
            while self._free:
                await self._close_quietly(self._free.popleft())
            await self.drain()
        finally:
            self.executor.shutdown(wait=True)
