"""A worker whose lease lapsed while it was alive must not submit a batch another worker adopted.

Deterministic form of what chaos runs hit on MariaDB (duplicate_live > 0): worker A spools a
draft, stalls past its lease (here: the lease is expired by hand), worker B adopts the draft;
when A's submitter gets to it, it must find the batch is no longer its own and let go, or the
same rows go out in two live remote batches. The same holds when the lease lapses while A's
``batches.create`` is in flight.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from openai.types import Batch

import engine.submitter as submitter_module
from engine.batch_api import BatchApi
from engine.emulator import Emulator, EmulatorConfig
from engine.errors import LeaseExpiredError
from engine.job import JobSpec
from engine.pipeline import InFlightSlots, PipelineContext
from engine.producer import Producer
from engine.requests import RequestRenderer
from engine.results import ResultParser
from engine.store import BatchRecord, Store
from engine.submitter import Submitter, TokenBudget
from tests.integration.helpers import fast_settings
from tests.reliability import harness
from tests.reliability.harness import fast_api
from tests.support import DbTarget


@contextlib.asynccontextmanager
async def _world(
    db: DbTarget, seed: int
) -> AsyncIterator[tuple[Emulator, BatchApi, JobSpec, Store]]:
    """An emulator, a fast API client, a 10-row job and an open store; all undone afterwards."""
    async with Emulator(EmulatorConfig(seed=seed)) as emu, fast_api(emu) as api:
        try:
            await harness.prepare(db, harness.texts(10))
            spec = {"dsn": db.dsn, "prefix": db.prefix}
            store = await Store.open(harness.store_settings(spec))
            try:
                yield emu, api, harness.job_for(spec), store
            finally:
                await store.close()
        finally:
            harness.cleanup(db)


async def test_stale_owner_does_not_submit_an_adopted_draft(
    db: DbTarget, tmp_path: Path
) -> None:
    async with _world(db, 91) as (emu, api, job, store):
        ctx = _context(job, store, api, tmp_path, "A")
        queue: asyncio.Queue[BatchRecord] = asyncio.Queue()
        draft = await Producer(ctx, queue, until_idle=True, num_batches=1).build_draft()
        assert draft is not None
        # A stalls past its lease; B adopts the draft.
        await store.renew_batch_leases("A", [draft.record.id], 0.0)
        adopted = await store.adopt_batches(job, "B", 30.0, ("draft",))
        assert [r.record.id for r in adopted] == [draft.record.id]
        tracked: list[BatchRecord] = []
        submitter = Submitter(ctx, queue, TokenBudget(None), track=_into(tracked),
                              rebuild_spool=_no_rebuild)
        await submitter.submit(draft.record)
        assert not emu.record.batches, "A created a batch B owns"
        assert not tracked
        assert draft.record.id not in ctx.owned
        record = await store.get_batch(draft.record.id)
        assert record is not None
        assert record.worker_id == "B"


async def test_create_in_flight_when_the_lease_lapses_is_found_not_doubled(
    db: DbTarget, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A's create lands after B adopted the uploaded batch: one remote batch, tracked by B.

    A stalls inside ``batches.create`` past its lease; B adopts the batch meanwhile. A's
    fenced write of the remote id then fails, so A lets go; B waits out A's request timeout,
    finds A's remote batch by its metadata and tracks it instead of creating a second one.
    """
    monkeypatch.setattr(submitter_module, "ADOPT_SETTLE_MARGIN_S", 0.2)
    async with _world(db, 92) as (emu, api, job, store):
        queue: asyncio.Queue[BatchRecord] = asyncio.Queue()
        ctx_a = _context(job, store, api, tmp_path, "A")
        ctx_b = _context(job, store, api, tmp_path, "B")
        draft = await Producer(ctx_a, queue, until_idle=True, num_batches=1).build_draft()
        assert draft is not None
        real_create = api.create_batch
        adopted: list[tuple[BatchRecord, str | None]] = []

        async def stalled_create(*args: Any, **kwargs: Any) -> Batch:
            # The request reaches the API; meanwhile A's lease lapses and B adopts.
            batch = await real_create(*args, **kwargs)
            await store.renew_batch_leases("A", [draft.record.id], 0.0)
            adopted.extend(await store.adopt_batches(job, "B", 30.0, ("uploaded",)))
            return batch

        monkeypatch.setattr(api, "create_batch", stalled_create)
        tracked_a: list[BatchRecord] = []
        submitter_a = Submitter(ctx_a, queue, TokenBudget(None), track=_into(tracked_a),
                                rebuild_spool=_no_rebuild)
        await submitter_a.submit(draft.record)
        assert len(emu.record.batches) == 1
        assert not tracked_a, "A kept a batch B owns"
        assert draft.record.id not in ctx_a.owned
        assert [(r.id, prev) for r, prev in adopted] == [(draft.record.id, "A")]
        monkeypatch.setattr(api, "create_batch", real_create)

        inbox: asyncio.Queue[BatchRecord] = asyncio.Queue()
        tracked_b: list[BatchRecord] = []
        submitter_b = Submitter(ctx_b, inbox, TokenBudget(None), track=_into(tracked_b),
                                rebuild_spool=_no_rebuild)
        ctx_b.owned.add(draft.record.id)
        submitter_b.adopted_from(adopted[0][0], "A")
        assert submitter_b.not_before[draft.record.id] > time.monotonic() + 5
        await inbox.put(adopted[0][0])
        runner = asyncio.create_task(submitter_b.run())
        try:
            async with asyncio.timeout(30):
                while not tracked_b:
                    await asyncio.sleep(0.05)
        finally:
            ctx_b.stopping.set()
            await runner
        remote = next(iter(emu.record.batches))
        assert len(emu.record.batches) == 1, "B created the batch a second time"
        assert [r.remote_batch_id for r in tracked_b] == [remote]
        record = await store.get_batch(draft.record.id)
        assert record is not None
        assert (record.worker_id, record.state, record.remote_batch_id) == (
            "B", "submitted", remote,
        )


async def test_no_create_starts_after_the_lease_deadline(tmp_path: Path) -> None:
    async with Emulator(EmulatorConfig(seed=93)) as emu, fast_api(emu) as api:
        path = tmp_path / "in.jsonl"
        path.write_bytes(
            b'{"custom_id": "a", "method": "POST", "url": "/v1/chat/completions", '
            b'"body": {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "x"}]}}\n'
        )
        file_id = await api.upload_file(path)
        with pytest.raises(LeaseExpiredError):
            await api.create_batch(
                file_id, "/v1/chat/completions", {"engine_batch": "b1"},
                deadline=time.monotonic() - 0.001,
            )
        assert not emu.record.batches
        batch = await api.create_batch(
            file_id, "/v1/chat/completions", {"engine_batch": "b1"},
            deadline=time.monotonic() + 30,
        )
        assert list(emu.record.batches) == [batch.id]


def _context(job: JobSpec, store: Store, api: BatchApi, tmp_path: Path, worker: str
             ) -> PipelineContext:
    """A pipeline context for one worker sharing the spool directory."""
    settings = fast_settings(tmp_path, worker_id=worker)
    return PipelineContext(
        job=job, store=store, api=api, settings=settings, worker_id=worker,
        renderer=RequestRenderer(job), parser=ResultParser(job),
        slots=InFlightSlots(settings.max_in_flight), spool_dir=tmp_path / "spool",
        emit=lambda _event: None,
    )


def _into(tracked: list[BatchRecord]) -> Callable[[BatchRecord], Awaitable[None]]:
    """A track callback that collects what it is given."""

    async def track(record: BatchRecord) -> None:
        tracked.append(record)

    return track


async def _no_rebuild(_record: BatchRecord) -> None:
    """The spool is still on disk in these tests."""
    raise AssertionError("the spool is still there")
