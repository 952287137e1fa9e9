"""Restart from every persisted state: all rows done once, nothing billed twice."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from engine import faults
from engine.emulator import Emulator, EmulatorConfig
from engine.engine import Engine
from tests.integration.helpers import api_for, cleanup, fast_settings, prepared
from tests.support import DbTarget


@pytest.fixture(autouse=True)
def _disarm() -> Iterator[None]:
    yield
    faults.disarm()


@pytest.mark.parametrize("point", faults.CRASH_POINTS)
async def test_restart_after_crash_at_each_point(
    point: str, sqlite_db: DbTarget, tmp_path: Path
) -> None:
    async with Emulator(EmulatorConfig(seed=11, latency_s=0.02)) as emu:
        job, store_settings = await prepared(sqlite_db, [f"text {i}" for i in range(25)])
        settings = fast_settings(tmp_path, batch_size=10, max_in_flight=2, worker_id="w1")
        faults.arm(point, after=2)  # the second time: one batch is already on its way
        async with Engine(job, store=store_settings, api=api_for(emu), settings=settings) as eng:
            with pytest.raises(faults.SimulatedCrash):
                await eng.run(until_idle=True)
        faults.disarm()
        async with Engine(job, store=store_settings, api=api_for(emu), settings=settings) as eng:
            summary = await eng.run(until_idle=True)
        assert summary.counts["done"] == 25, summary.counts
        assert summary.counts["dead"] == 0
        assert emu.record.duplicate_live_custom_ids() == set()
        # Every row reached the API in exactly one batch that was not lost: no double billing.
        billed = [
            cid for b in emu.record.batches.values() if b.status != "failed" for cid in b.custom_ids
        ]
        assert len(billed) == len(set(billed)) == 25, point


async def test_restart_on_server_databases_after_create_before_save(
    server_db: DbTarget, tmp_path: Path
) -> None:
    db = server_db
    try:
        async with Emulator(EmulatorConfig(seed=12)) as emu:
            job, store_settings = await prepared(db, [f"text {i}" for i in range(15)])
            settings = fast_settings(tmp_path, batch_size=10, worker_id="w2")
            faults.arm("after_create")
            async with Engine(job, store=store_settings, api=api_for(emu),
                              settings=settings) as eng:
                with pytest.raises(faults.SimulatedCrash):
                    await eng.run(until_idle=True)
            faults.disarm()
            async with Engine(job, store=store_settings, api=api_for(emu),
                              settings=settings) as eng:
                summary = await eng.run(until_idle=True)
            assert summary.counts["done"] == 15
            assert len(emu.record.batches) == 2  # re-attached, never created twice
    finally:
        cleanup(db)
