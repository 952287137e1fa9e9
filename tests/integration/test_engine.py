"""The engine end to end: live databases, the emulator over real HTTP, the official client."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import orjson
import pytest

from engine import LifecycleError
from engine.emulator import Emulator, EmulatorConfig, FaultConfig
from engine.engine import Engine, EngineEvent
from tests.integration.helpers import (
    api_for,
    cleanup,
    emulator_answers,
    fast_settings,
    fetch,
    prepared,
)
from tests.support import DbTarget


@pytest.fixture
async def emulator() -> AsyncIterator[Emulator]:
    async with Emulator(EmulatorConfig(seed=3)) as emu:
        yield emu


async def test_every_row_processed_once_on_every_database(
    db: DbTarget, emulator: Emulator, tmp_path: Path
) -> None:
    texts = [f"row {i} name=Person{i} tags=a,b" for i in range(45)]
    job, store_settings = await prepared(db, texts)
    try:
        async with Engine(
            job, store=store_settings, api=api_for(emulator), settings=fast_settings(tmp_path)
        ) as engine:
            summary = await engine.run(until_idle=True)
        assert summary.counts["done"] == 45
        assert summary.counts["pending"] == summary.counts["dead"] == 0
        assert summary.batches_applied == 5  # 45 rows in batches of 10
        rows = fetch(db.dsn, f"SELECT id, processed, out_name, out_tags, out_score "
                     f"FROM {job.source.table}")
        assert len(rows) == 45
        answers = emulator_answers(emulator.storage_dir)
        for key, processed, name, tags, score in rows:
            assert processed is not None
            # Each row holds exactly the answer the emulator gave for it.
            want = answers[str(key)]
            assert (name, orjson.loads(tags), score) == (want["name"], want["tags"],
                                                         want["score"])
        assert emulator.record.duplicate_live_custom_ids() == set()
        assert not list((tmp_path / "spool").glob("*.jsonl"))  # spool cleaned up
    finally:
        cleanup(db)


async def test_many_batches_live_at_once(sqlite_db: DbTarget, tmp_path: Path) -> None:
    config = EmulatorConfig(seed=1, latency_s=0.3)
    async with Emulator(config) as emu:
        job, store_settings = await prepared(sqlite_db, [f"text {i}" for i in range(40)])
        settings = fast_settings(tmp_path, batch_size=10, max_in_flight=4)
        events: list[EngineEvent] = []
        async with Engine(job, store=store_settings, api=api_for(emu), settings=settings,
                          on_event=events.append) as engine:
            summary = await engine.run(until_idle=True)
        assert summary.counts["done"] == 40
        assert emu.record.max_concurrent_live() >= 3
        assert emu.record.duplicate_live_custom_ids() == set()
        applied = [e for e in events if e.kind == "batch_state" and e.state == "applied/completed"]
        assert len(applied) == 4  # the embedding callback saw every batch end


async def test_bad_input_is_dead_with_reason_and_never_sent(
    sqlite_db: DbTarget, emulator: Emulator, tmp_path: Path
) -> None:
    job, store_settings = await prepared(sqlite_db, ["fine text", None, "", "   \t\n", "ok 2"])
    async with Engine(job, store=store_settings, api=api_for(emulator),
                      settings=fast_settings(tmp_path)) as engine:
        summary = await engine.run(until_idle=True)
        dead = await engine.store.dead_items(job)
    assert summary.counts["done"] == 2
    assert summary.counts["dead"] == 3
    assert {key for key, _ in dead} == {"2", "3", "4"}
    assert all("input rejected" in reason for _, reason in dead)
    sent = {cid for batch in emulator.record.batches.values() for cid in batch.custom_ids}
    assert len(sent) == 2


async def test_failed_lines_are_retried_until_done_or_dead(
    sqlite_db: DbTarget, tmp_path: Path
) -> None:
    faults = FaultConfig(line_error_rate=0.3, line_timeout_rate=0.1)
    async with Emulator(EmulatorConfig(seed=5, faults=faults)) as emu:
        job, store_settings = await prepared(sqlite_db, [f"text {i}" for i in range(60)])
        settings = fast_settings(tmp_path, max_attempts=6)
        async with Engine(job, store=store_settings, api=api_for(emu), settings=settings) as eng:
            summary = await eng.run(until_idle=True)
            attempts = fetch(sqlite_db.dsn, f"SELECT MAX(attempts) FROM {sqlite_db.prefix}items")
        assert summary.counts["done"] + summary.counts["dead"] == 60
        assert summary.counts["done"] >= 55  # 40% failure, 6 tries: dead is very unlikely
        assert summary.rows_requeued > 0
        assert attempts[0][0] >= 1
        assert emu.record.duplicate_live_custom_ids() == set()


async def test_schema_violations_end_dead_after_max_attempts(
    sqlite_db: DbTarget, tmp_path: Path
) -> None:
    async with Emulator(EmulatorConfig(faults=FaultConfig(schema_break_rate=1.0))) as emu:
        job, store_settings = await prepared(sqlite_db, [f"text {i}" for i in range(12)])
        settings = fast_settings(tmp_path, max_attempts=2)
        async with Engine(job, store=store_settings, api=api_for(emu), settings=settings) as eng:
            summary = await eng.run(until_idle=True)
            dead = await eng.store.dead_items(job)
    assert summary.counts["dead"] == 12
    assert len(dead) == 12
    assert all(reason for _, reason in dead)
    # 12 rows, 2 attempts each, never more.
    assert sum(len(b.custom_ids) for b in emu.record.batches.values()) == 24


async def test_expired_batches_keep_partial_results(sqlite_db: DbTarget, tmp_path: Path) -> None:
    faults = FaultConfig(expire_fraction=0.5)
    async with Emulator(EmulatorConfig(seed=2, faults=faults)) as emu:
        job, store_settings = await prepared(sqlite_db, [f"text {i}" for i in range(20)])
        settings = fast_settings(tmp_path, batch_size=20, max_attempts=10)
        async with Engine(job, store=store_settings, api=api_for(emu), settings=settings) as eng:
            first = await eng.run(num_batches=1)
        assert first.counts["done"] == 10  # half the batch finished before it expired
        assert first.counts["pending"] == 10
        emu.faults = FaultConfig()
        async with Engine(job, store=store_settings, api=api_for(emu), settings=settings) as eng:
            second = await eng.run(until_idle=True)
        assert second.counts["done"] == 20


async def test_token_limit_waits_and_resubmits_without_burning_attempts(
    sqlite_db: DbTarget, tmp_path: Path
) -> None:
    job, store_settings = await prepared(sqlite_db, [f"text {i} " * 60 for i in range(30)])
    faults = FaultConfig(enqueued_token_limit=2000)
    # Batches stay live long enough that the second one is validated while the first runs.
    async with Emulator(EmulatorConfig(latency_s=0.5, faults=faults)) as emu:
        settings = fast_settings(tmp_path, batch_size=10, max_in_flight=3, max_attempts=1)
        async with Engine(job, store=store_settings, api=api_for(emu), settings=settings) as eng:
            summary = await eng.run(until_idle=True)
        failed = [b for b in emu.record.batches.values() if b.status == "failed"]
    assert summary.counts["done"] == 30
    assert summary.counts["dead"] == 0  # max_attempts=1: a burned attempt would kill rows
    assert failed, "the limit should have refused some batches"


async def test_num_batches_stops_after_that_many(
    sqlite_db: DbTarget, emulator: Emulator, tmp_path: Path
) -> None:
    job, store_settings = await prepared(sqlite_db, [f"text {i}" for i in range(50)])
    settings = fast_settings(tmp_path, batch_size=10, max_in_flight=1)
    async with Engine(job, store=store_settings, api=api_for(emulator), settings=settings) as eng:
        summary = await eng.run(num_batches=2)
    assert summary.batches_applied == 2
    assert summary.counts["done"] == 20
    assert summary.counts["pending"] == 30


async def test_stop_is_graceful_and_a_new_run_finishes(
    sqlite_db: DbTarget, tmp_path: Path
) -> None:
    async with Emulator(EmulatorConfig(latency_s=0.2)) as emu:
        job, store_settings = await prepared(sqlite_db, [f"text {i}" for i in range(40)])
        settings = fast_settings(tmp_path, batch_size=10, max_in_flight=2)
        submitted = asyncio.Event()

        def on_event(event: EngineEvent) -> None:
            if event.kind == "batch_state" and (event.state or "").startswith("submitted/"):
                submitted.set()

        async with Engine(job, store=store_settings, api=api_for(emu), settings=settings,
                          on_event=on_event) as eng:
            task = asyncio.create_task(eng.run())
            # Stop once a batch is demonstrably live at the API, not after a guessed delay.
            await asyncio.wait_for(submitted.wait(), 10)
            live_at_stop = [b.id for b in emu.record.batches.values()
                            if b.status not in ("completed", "failed", "expired", "cancelled")]
            eng.stop()
            summary = await asyncio.wait_for(task, 10)
        assert summary.stopped
        assert live_at_stop
        assert summary.counts.get("done", 0) < 40  # work was left for the next run
        async with Engine(job, store=store_settings, api=api_for(emu), settings=settings) as eng:
            final = await eng.run(until_idle=True)
        assert final.counts["done"] == 40
        assert emu.record.duplicate_live_custom_ids() == set()


async def test_engine_refuses_reuse(sqlite_db: DbTarget, emulator: Emulator,
                                    tmp_path: Path) -> None:
    job, store_settings = await prepared(sqlite_db, ["x"])
    engine = Engine(job, store=store_settings, api=api_for(emulator),
                    settings=fast_settings(tmp_path))
    with pytest.raises(LifecycleError):
        await engine.run()
    async with engine:
        pass
    with pytest.raises(LifecycleError):
        async with engine:
            pass


async def test_submit_one_then_check_applies(
    sqlite_db: DbTarget, emulator: Emulator, tmp_path: Path
) -> None:
    job, store_settings = await prepared(sqlite_db, [f"text {i}" for i in range(7)])
    settings = fast_settings(tmp_path, batch_size=5)
    async with Engine(job, store=store_settings, api=api_for(emulator), settings=settings) as eng:
        record = await eng.submit_one()
        assert record is not None
        assert record.state == "submitted"
        assert record.remote_batch_id is not None
        for _ in range(100):
            checked = await eng.check_batch(record.remote_batch_id)
            if checked.state == "applied":
                break
            await asyncio.sleep(0.01)
        assert checked.state == "applied"
        counts = await eng.store.counts(job.name)
    assert counts["done"] == 5
    assert counts["pending"] == 2


async def test_thousand_rows_with_batches_overlapping_in_time(
    db: DbTarget, tmp_path: Path
) -> None:
    # A batch lives a full second, so several must be live together even on a loaded machine.
    async with Emulator(EmulatorConfig(seed=8, latency_s=1.0)) as emu:
        job, store_settings = await prepared(db, [f"person {i} likes tea" for i in range(1000)])
        try:
            settings = fast_settings(tmp_path, batch_size=100, max_in_flight=4)
            async with Engine(job, store=store_settings, api=api_for(emu),
                              settings=settings) as eng:
                summary = await eng.run(until_idle=True)
            assert summary.counts["done"] == 1000
            assert summary.batches_applied == 10
            assert emu.record.max_concurrent_live() >= 3  # the emulator's own timestamps
            assert emu.record.duplicate_live_custom_ids() == set()
        finally:
            cleanup(db)


async def test_cancelled_batch_applies_partial_results_and_retries_the_rest_free(
    sqlite_db: DbTarget, tmp_path: Path
) -> None:
    # 40 lines at 10 per second: cancelled as soon as one is done, the batch is partial on
    # any machine (a fixed sleep could catch it with none done when the machine is loaded).
    async with Emulator(EmulatorConfig(seed=9, rate_rps=10)) as emu:
        job, store_settings = await prepared(sqlite_db, [f"text {i}" for i in range(40)])
        settings = fast_settings(tmp_path, batch_size=40, max_attempts=1)
        async with Engine(job, store=store_settings, api=api_for(emu), settings=settings) as eng:
            record = await eng.submit_one()
            assert record is not None
            assert record.remote_batch_id is not None
            async with asyncio.timeout(20):
                while True:
                    remote = await eng.api.retrieve_batch(record.remote_batch_id)
                    counts_now = remote.request_counts
                    if counts_now is not None and counts_now.completed > 0:
                        break
                    await asyncio.sleep(0.02)
            await eng.cancel_batch(record.remote_batch_id)
            async with asyncio.timeout(20):
                while (checked := await eng.check_batch(record.id)).state != "applied":
                    await asyncio.sleep(0.02)
            assert checked.remote_status == "cancelled"
            counts = await eng.store.counts(job.name)
            assert 0 < counts["done"] < 40
            assert counts["done"] + counts["pending"] == 40  # max_attempts=1, none dead
            emu.faults = FaultConfig()
            final = await eng.run(until_idle=True)
    assert final.counts["done"] == 40
