"""DESIGN.md guarantee 5: no database transaction spans an await on the network.

A context variable is set while a store transaction is open; every Batch API call checks it.
Context variables follow the task that set them, so a transaction in one stage and an API
call in another, running side by side, are not confused with one inside the other.

A pooled connection from ``Pool.acquire`` that has run a statement is in a transaction too
where the dialect does not run in autocommit (PostgreSQL, MariaDB: the first statement opens
one implicitly, held until the pool rolls it back on return), so the watch marks that as well.
"""

from __future__ import annotations

import contextvars
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from engine import BatchApiError
from engine.batch_api import BatchApi
from engine.emulator import Emulator, EmulatorConfig, FaultConfig
from engine.engine import Engine
from engine.store import Store
from engine.store.pool import Connection, Pool
from tests.integration.helpers import api_for, cleanup, fast_settings, prepared
from tests.support import DbTarget

IN_TRANSACTION: contextvars.ContextVar[bool] = contextvars.ContextVar("in_tx", default=False)
# The connection this task holds from Pool.acquire on a dialect without autocommit.
HELD: contextvars.ContextVar[Connection | None] = contextvars.ContextVar("held", default=None)


@dataclass
class Watch:
    """Every API call seen, and those made while a transaction was open."""

    calls: list[str] = field(default_factory=list)
    inside: list[str] = field(default_factory=list)


@pytest.fixture
def watch(monkeypatch: pytest.MonkeyPatch) -> Watch:
    """Mark open transactions and check each Batch API call against the mark."""
    seen = Watch()
    original_tx = Pool.transaction
    original_acquire = Pool.acquire
    original_run = Connection._call
    original_call = BatchApi._call
    ran: set[int] = set()  # ids of held connections that ran a statement since acquire

    @asynccontextmanager
    async def acquire(self: Pool) -> AsyncIterator[Connection]:
        async with original_acquire(self) as conn:
            if self.dialect.autocommit:
                yield conn
                return
            ran.discard(id(conn))
            token = HELD.set(conn)
            try:
                yield conn
            finally:
                HELD.reset(token)
                ran.discard(id(conn))

    async def run(self: Connection, fn: Callable[[], Any]) -> Any:
        ran.add(id(self))
        return await original_run(self, fn)

    @asynccontextmanager
    async def transaction(self: Pool) -> AsyncIterator[Connection]:
        token = IN_TRANSACTION.set(True)
        try:
            async with original_tx(self) as conn:
                yield conn
        finally:
            IN_TRANSACTION.reset(token)

    async def call(self: BatchApi, what: str, fn: Callable[[], Awaitable[Any]]) -> Any:
        seen.calls.append(what)
        held = HELD.get()
        if IN_TRANSACTION.get() or (held is not None and id(held) in ran):
            seen.inside.append(what)
        return await original_call(self, what, fn)

    monkeypatch.setattr(Pool, "transaction", transaction)
    monkeypatch.setattr(Pool, "acquire", acquire)
    monkeypatch.setattr(Connection, "_call", run)
    monkeypatch.setattr(BatchApi, "_call", call)
    return seen


async def test_no_api_call_inside_a_transaction(db: DbTarget, watch: Watch, tmp_path: Path) -> None:
    faults = FaultConfig(line_error_rate=0.2)
    async with Emulator(EmulatorConfig(seed=21, latency_s=0.05, faults=faults)) as emu:
        job, store_settings = await prepared(db, [f"text {i}" for i in range(30)])
        try:
            settings = fast_settings(tmp_path, batch_size=10, max_in_flight=2, max_attempts=5)
            async with Engine(job, store=store_settings, api=api_for(emu),
                              settings=settings) as eng:
                summary = await eng.run(until_idle=True)
        finally:
            cleanup(db)
    assert summary.counts["done"] + summary.counts["dead"] == 30
    assert {"upload_file", "create_batch", "retrieve_batch", "download_file"} <= set(watch.calls)
    assert watch.inside == [], f"API calls made inside a transaction: {watch.inside}"


async def test_the_watch_sees_a_call_made_inside_a_transaction(
    sqlite_db: DbTarget, watch: Watch
) -> None:
    """The check itself can fail: an API call inside a transaction is caught."""
    _job, store_settings = await prepared(sqlite_db, ["x"])
    store = await Store.open(store_settings)
    async with (
        store,
        Emulator(EmulatorConfig()) as emu,
        BatchApi(api_for(emu)) as api,
        store.pool.transaction(),
    ):
        with pytest.raises(BatchApiError):  # unknown id: a 404, not retried
            await api.retrieve_batch("batch_unknown")
    assert watch.inside == ["retrieve_batch"]


async def test_the_watch_sees_a_call_made_while_holding_a_used_connection(
    server_db: DbTarget, watch: Watch
) -> None:
    """Without autocommit, a SELECT on an acquired connection opens a transaction: caught."""
    _job, store_settings = await prepared(server_db, ["x"])
    store = await Store.open(store_settings)
    try:
        async with (
            Emulator(EmulatorConfig()) as emu,
            BatchApi(api_for(emu)) as api,
            store.pool.acquire() as conn,
        ):
            with pytest.raises(BatchApiError):  # before any statement: not in a transaction
                await api.retrieve_batch("batch_unknown")
            await conn.fetchall("SELECT 1")
            with pytest.raises(BatchApiError):
                await api.retrieve_batch("batch_unknown")
    finally:
        await store.close()
        cleanup(server_db)
    assert watch.calls == ["retrieve_batch", "retrieve_batch"]
    assert watch.inside == ["retrieve_batch"]
