"""Database faults the engine must ride out: its connections killed server-side, an outage.

Used by test_db_faults.py. ``Killer`` gives the
engine its own database user so every one of its sessions, idle ones too, can be found and
killed; ``TcpProxy`` sits between the engine and the server and can refuse and drop
connections for a while.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from engine.emulator import Emulator, EmulatorConfig
from engine.store.pool import Connection
from tests.integration.helpers import connect
from tests.reliability import harness
from tests.support import DbTarget

ROWS = 400


class TcpProxy:
    """Forwards 127.0.0.1:<port> to a database; ``outage()`` makes it unreachable a while."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.port = 0
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self.connections = 0

    async def start(self) -> None:
        """Listen (on the same port again after an outage)."""
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        except OSError:
            writer.close()
            return
        self._writers.update((writer, up_writer))
        pumps = [asyncio.ensure_future(self._pump(reader, up_writer)),
                 asyncio.ensure_future(self._pump(up_reader, writer))]
        self._tasks.update(pumps)
        await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
        for task in pumps:
            task.cancel()
        for w in (writer, up_writer):
            w.close()
            self._writers.discard(w)
        await asyncio.gather(*pumps, return_exceptions=True)
        self._tasks.difference_update(pumps)

    @staticmethod
    async def _pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError, OSError):
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()

    def _cut(self) -> None:
        """Abort every proxied connection, as a network failure would."""
        for writer in list(self._writers):
            transport = writer.transport
            transport.abort()
        self._writers.clear()

    async def outage(self, seconds: float) -> None:
        """Refuse connections and drop the open ones for ``seconds``, then listen again."""
        assert self._server is not None
        self._server.close()
        self._cut()
        await self._server.wait_closed()
        await asyncio.sleep(seconds)  # the outage itself: there is no setting for a down server
        await self.start()

    async def close(self) -> None:
        """Stop listening and drop everything."""
        if self._server is not None:
            self._server.close()
            self._cut()
            await self._server.wait_closed()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


def port_of(dsn: str) -> int:
    found = re.search(r"Port=(\d+)", dsn, re.IGNORECASE)
    assert found, dsn
    return int(found.group(1))


def with_port(dsn: str, port: int) -> str:
    return re.sub(r"Port=\d+", f"Port={port}", dsn, flags=re.IGNORECASE)


class Killer:
    """Kills the engine's connections from the server side."""

    def __init__(self, target: DbTarget) -> None:
        self.target = target
        self.user = f"eng{uuid.uuid4().hex[:10]}"
        self.killed = 0

    def engine_dsn(self) -> str:
        """The DSN the engine uses: its own user, so its sessions (idle ones too) can be found."""
        dsn = re.sub(r"Uid=[^;]*;", f"Uid={self.user};", self.target.dsn)
        return re.sub(r"Pwd=[^;]*;?", "", dsn)

    def __enter__(self) -> Killer:
        conn = connect(self.target.dsn)
        try:
            cur = conn.cursor()
            if self.target.dialect == "postgresql":
                cur.execute(f"CREATE ROLE {self.user} LOGIN SUPERUSER")
            else:
                for host in ("%", "localhost"):
                    cur.execute(f"CREATE USER '{self.user}'@'{host}'")
                    cur.execute(f"GRANT ALL PRIVILEGES ON test.* TO '{self.user}'@'{host}'")
        finally:
            conn.close()
        return self

    def __exit__(self, *exc: object) -> None:
        conn = connect(self.target.dsn)
        try:
            cur = conn.cursor()
            if self.target.dialect == "postgresql":
                cur.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = ?",
                    self.user,
                ).fetchall()
                cur.execute(f"DROP ROLE IF EXISTS {self.user}")
            else:
                for host in ("%", "localhost"):
                    cur.execute(f"DROP USER IF EXISTS '{self.user}'@'{host}'")
        finally:
            conn.close()

    def sessions(self) -> int:
        """How many connections the engine has open now."""
        conn = connect(self.target.dsn)
        try:
            if self.target.dialect == "postgresql":
                sql = "SELECT COUNT(*) FROM pg_stat_activity WHERE usename = ?"
            else:
                sql = "SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE USER = ?"
            return int(conn.cursor().execute(sql, self.user).fetchone()[0])
        finally:
            conn.close()

    def kill_all(self) -> int:
        """Kill every connection of the engine now; return how many."""
        conn = connect(self.target.dsn)
        try:
            cur = conn.cursor()
            if self.target.dialect == "postgresql":
                rows = cur.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = ?",
                    self.user,
                ).fetchall()
                count = sum(1 for (ok,) in rows if ok)
            else:
                ids = [r[0] for r in cur.execute(
                    "SELECT ID FROM information_schema.PROCESSLIST WHERE USER = ?", self.user
                ).fetchall()]
                count = 0
                for session in ids:
                    with contextlib.suppress(Exception):
                        cur.execute(f"KILL CONNECTION {int(session)}")
                        count += 1
        finally:
            conn.close()
        self.killed += count
        return count


async def scenario_connections_killed(target: DbTarget, tmp_path: Path) -> None:
    """Kill every engine connection five times while it runs; it retries and finishes."""
    async with Emulator(EmulatorConfig(seed=51, latency_s=0.3)) as emu:
        try:
            await harness.prepare(target, harness.texts(ROWS))
            with Killer(target) as killer:
                spec = harness.spec_for(
                    target, emu, dsn=killer.engine_dsn(), worker_id="k1", log_level="WARNING",
                    settings=harness.fast(tmp_path / "spool", batch_size=20, max_in_flight=2),
                )
                proc = await harness.start_worker(spec)
                rounds = 0
                while proc.returncode is None and rounds < 5:
                    await asyncio.sleep(0.3)
                    if await asyncio.to_thread(killer.kill_all):
                        rounds += 1
                ended = await harness.finish(proc)
                assert killer.killed > 0, "no engine connection was ever killed"
                assert ended.code == 0, ended.stderr[-3000:]
                assert "retrying" in ended.stderr, "the engine never retried a transaction"
            restarts = 0
            if harness.unresolved(target, ROWS):
                restarts = await harness.run_until_resolved(target, spec | {"dsn": target.dsn},
                                                            ROWS)
            figures = harness.measure(target, emu, restarts)
            assert figures.problems() == [], figures
            assert figures.done == ROWS
        finally:
            harness.cleanup(target)


async def scenario_database_unreachable(target: DbTarget, tmp_path: Path, outage_s: float) -> None:
    """The database refuses and drops connections twice for outage_s; the engine resumes."""
    proxy = TcpProxy(port_of(target.dsn))
    await proxy.start()
    async with Emulator(EmulatorConfig(seed=52, latency_s=0.1)) as emu:
        try:
            await harness.prepare(target, harness.texts(ROWS))
            spec = harness.spec_for(
                target, emu, dsn=with_port(target.dsn, proxy.port), worker_id="u1",
                settings=harness.fast(tmp_path / "spool", batch_size=40, max_in_flight=2),
            )
            proc = await harness.start_worker(spec)
            outages = 0
            while proc.returncode is None and outages < 2:
                await asyncio.sleep(0.5)
                if harness.unresolved(target, ROWS) < ROWS * 3 // 4:
                    await proxy.outage(outage_s)
                    outages += 1
            ended = await harness.finish(proc)
            assert outages > 0, (
                f"the run ended (exit {ended.code}) before the database went away: "
                f"{ended.stderr[-2000:]}"
            )
            assert ended.code == 0, ended.stderr[-3000:]
            figures = harness.measure(target, emu, 0)
            assert figures.problems() == [], figures
            assert figures.done == ROWS
        finally:
            await proxy.close()
            harness.cleanup(target)


# -- drivers that lie: faults under the store, in the engine's own process -------------------


def _is_source_write(sql: str, source: str) -> bool:
    """Whether a statement is the apply's UPDATE of the source table."""
    head = sql.lstrip()[:7].upper()
    return head == "UPDATE " and source in sql.split(" SET ", 1)[0]


def lose_apply_commits(monkeypatch: Any, source: str, lose: int) -> dict[str, int]:
    """Make the COMMIT of ``lose`` apply transactions report success without committing.

    What psqlODBC does on a backend killed at the wrong moment: the transaction that wrote
    the source rows and marked their items done is rolled back, and COMMIT returns normally.
    Returns the counter of commits lost so far.
    """
    real_execute, real_fetchall = Connection.execute, Connection.fetchall
    real_executemany, real_commit = Connection.executemany, Connection.commit
    real_rollback = Connection.rollback
    state = {"lost": 0}
    wrote: set[int] = set()

    async def execute(self: Connection, sql: str, params: Sequence[Any] = ()) -> int:
        if _is_source_write(sql, source):
            wrote.add(id(self))
        return await real_execute(self, sql, params)

    async def fetchall(self: Connection, sql: str, params: Sequence[Any] = ()) -> Any:
        if _is_source_write(sql, source):
            wrote.add(id(self))
        return await real_fetchall(self, sql, params)

    async def executemany(self: Connection, sql: str, seq: Sequence[Sequence[Any]]) -> None:
        if _is_source_write(sql, source):
            wrote.add(id(self))
        await real_executemany(self, sql, seq)

    async def commit(self: Connection) -> None:
        if id(self) in wrote and state["lost"] < lose:
            wrote.discard(id(self))
            state["lost"] += 1
            await real_rollback(self)  # nothing committed ...
            return  # ... and COMMIT "succeeded"
        wrote.discard(id(self))
        await real_commit(self)

    monkeypatch.setattr(Connection, "execute", execute)
    monkeypatch.setattr(Connection, "fetchall", fetchall)
    monkeypatch.setattr(Connection, "executemany", executemany)
    monkeypatch.setattr(Connection, "commit", commit)
    return state


def silence_source_writes(monkeypatch: Any, source: str, count: int) -> dict[str, int]:
    """Make ``count`` UPDATEs of the source table change no row and raise nothing.

    What MariaDB Connector/ODBC does with "Data truncated" (1265) in a non-strict session:
    SQLSTATE 01000, a warning pyodbc does not raise, and the row unchanged. Returns the
    counter of statements silenced so far.
    """
    real_execute, real_fetchall = Connection.execute, Connection.fetchall
    real_executemany = Connection.executemany
    state = {"silenced": 0}

    def rewrite(sql: str) -> str:
        if _is_source_write(sql, source) and state["silenced"] < count:
            state["silenced"] += 1
            return sql + " AND 1 = 0"
        return sql

    async def execute(self: Connection, sql: str, params: Sequence[Any] = ()) -> int:
        return await real_execute(self, rewrite(sql), params)

    async def fetchall(self: Connection, sql: str, params: Sequence[Any] = ()) -> Any:
        return await real_fetchall(self, rewrite(sql), params)

    async def executemany(self: Connection, sql: str, seq: Sequence[Sequence[Any]]) -> None:
        await real_executemany(self, rewrite(sql), seq)

    monkeypatch.setattr(Connection, "execute", execute)
    monkeypatch.setattr(Connection, "fetchall", fetchall)
    monkeypatch.setattr(Connection, "executemany", executemany)
    return state


async def scenario_connections_terminated(
    target: DbTarget, tmp_path: Path, *, rows: int, every_s: float, for_s: float, workers: int
) -> harness.Figures:
    """Issue 11's figure: every engine connection terminated every ``every_s`` for ``for_s``
    while ``workers`` workers run; then restarts until every row is resolved.
    """
    # Batches of 20 that take a second each, so the workers are busy the whole window.
    async with Emulator(EmulatorConfig(seed=53, latency_s=1.0)) as emu:
        try:
            await harness.prepare(target, harness.texts(rows))
            with Killer(target) as killer:
                procs = []
                for n in range(workers):
                    spec = harness.spec_for(
                        target, emu, dsn=killer.engine_dsn(), worker_id=f"t{n}",
                        log_level="WARNING",
                        settings=harness.fast(tmp_path / f"spool{n}", batch_size=20,
                                              max_in_flight=3),
                    )
                    procs.append(await harness.start_worker(spec))
                loop = asyncio.get_running_loop()
                # Start once every worker is connected, so the window covers their work
                # rather than their interpreters starting.
                while await asyncio.to_thread(killer.sessions) < workers:
                    assert all(p.returncode is None for p in procs), "a worker ended early"
                    await asyncio.sleep(0.05)
                end = loop.time() + for_s
                while loop.time() < end and any(p.returncode is None for p in procs):
                    await asyncio.to_thread(killer.kill_all)
                    await asyncio.sleep(every_s)
                ended = [await harness.finish(p, timeout_s=180) for p in procs]
                assert killer.killed > 0, (
                    "no engine connection was ever killed: "
                    + " | ".join(f"{e.code}: {e.stderr[-1500:]}" for e in ended)
                )
                print(f"connections terminated: {killer.killed}")
            for result in ended:
                assert result.code == 0, result.stderr[-3000:]
            spec = harness.spec_for(target, emu, worker_id="after", log_level="WARNING",
                                    settings=harness.fast(tmp_path / "spool-after"))
            restarts = 0
            if harness.unresolved(target, rows):
                restarts = await harness.run_until_resolved(target, spec, rows)
            return harness.measure(target, emu, restarts)
        finally:
            harness.cleanup(target)
