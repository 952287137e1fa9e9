"""A worker whose lease lapsed while it was alive must not submit a batch another worker adopted.

Deterministic form of what chaos runs hit on MariaDB (duplicate_live > 0): worker A spools a
draft, stalls past its lease (here: the lease is expired by hand), worker B adopts the draft;
when A's submitter gets to it, it must find the batch is no longer its own and let go, or the
same rows go out in two live remote batches.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from engine.emulator import Emulator, EmulatorConfig
from engine.pipeline import InFlightSlots, PipelineContext
from engine.producer import Producer
from engine.requests import RequestRenderer
from engine.results import ResultParser
from engine.store import BatchRecord, Store
from engine.submitter import Submitter, TokenBudget
from tests.conftest import DbTarget
from tests.integration.test_engine import fast_settings
from tests.reliability import harness
from tests.reliability.test_api_faults import fast_api


async def test_stale_owner_does_not_submit_an_adopted_draft(
    db: DbTarget, tmp_path: Path
) -> None:
    async with Emulator(EmulatorConfig(seed=91)) as emu, fast_api(emu) as api:
        try:
            await harness.prepare(db, harness.texts(10))
            spec = {"dsn": db.dsn, "prefix": db.prefix}
            job = harness.job_for(spec)
            store = await Store.open(harness.store_settings(spec))
            try:
                settings = fast_settings(tmp_path, worker_id="A")
                ctx = PipelineContext(
                    job=job, store=store, api=api, settings=settings, worker_id="A",
                    renderer=RequestRenderer(job), parser=ResultParser(job),
                    slots=InFlightSlots(settings.max_in_flight), spool_dir=tmp_path / "spool",
                    emit=lambda _event: None,
                )
                queue: asyncio.Queue[BatchRecord] = asyncio.Queue()
                draft = await Producer(ctx, queue, until_idle=True, num_batches=1).build_draft()
                assert draft is not None
                # A stalls past its lease; B adopts the draft.
                await store.renew_batch_leases("A", [draft.record.id], 0.0)
                adopted = await store.adopt_batches(job, "B", 30.0, ("draft",))
                assert [r.id for r in adopted] == [draft.record.id]
                tracked: list[BatchRecord] = []

                async def track(record: BatchRecord) -> None:
                    tracked.append(record)

                async def rebuild(_record: BatchRecord) -> None:
                    raise AssertionError("the spool is still there")

                submitter = Submitter(ctx, queue, TokenBudget(None), track=track,
                                      rebuild_spool=rebuild)
                await submitter.submit(draft.record)
                assert not emu.record.batches, "A created a batch B owns"
                assert not tracked
                assert draft.record.id not in ctx.owned
                record = await store.get_batch(draft.record.id)
                assert record is not None
                assert record.worker_id == "B"
            finally:
                await store.close()
        finally:
            harness.cleanup(db)
