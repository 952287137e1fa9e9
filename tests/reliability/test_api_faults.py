"""API faults through the emulator: every row ends done or dead with the right attempt count.

The attempt count is checked against what the emulator actually received: a row's custom_id
carries its attempt number, so for a done row the attempts sent must be exactly 0..attempts
(every failure burned one, nothing else did), and for a dead row 0..max_attempts-1.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from pathlib import Path
from typing import Any

import openai

from engine import EngineSettings
from engine.emulator import Emulator, EmulatorConfig, FaultConfig
from engine.engine import Engine, RunSummary
from tests.integration.helpers import fast_settings, fetch
from tests.reliability import harness
from tests.reliability.harness import fast_api
from tests.support import DbTarget


def attempt_mismatches(target: DbTarget, emu: Emulator, max_attempts: int) -> list[str]:
    """Rows whose stored attempts disagree with the attempts the API received."""
    sent: dict[str, set[int]] = defaultdict(set)
    for batch in emu.record.batches.values():
        if batch.status == "failed":  # refused at validation: no line was processed
            continue
        for custom_id in batch.custom_ids:
            _job, attempt, key = custom_id.split("|", 2)
            sent[key].add(int(attempt))
    wrong = []
    rows = fetch(target.dsn, f"SELECT source_key, state, attempts FROM {target.prefix}items")
    for key, state, attempts in rows:
        got = sent.get(str(key), set())
        if state == "done":
            expected = set(range(int(attempts) + 1))
        elif state == "dead":
            expected = set(range(max_attempts)) if got else set()
            if got and int(attempts) != max_attempts:
                wrong.append(f"{key}: dead after {attempts} of {max_attempts} attempts")
        else:
            wrong.append(f"{key}: still {state}")
            continue
        if got != expected:
            wrong.append(f"{key}: {state} with attempts={attempts}, sent {sorted(got)}")
    return wrong


async def run_engine(
    target: DbTarget, emu: Emulator, settings: EngineSettings, **run: Any
) -> RunSummary:
    """Run an in-process engine over the target's tables."""
    spec = {"dsn": target.dsn, "prefix": target.prefix}
    async with fast_api(emu) as api, Engine(
        harness.job_for(spec), store=harness.store_settings(spec), api=api, settings=settings
    ) as engine:
        return await engine.run(**run)


async def check(target: DbTarget, emu: Emulator, rows: int, max_attempts: int) -> None:
    """Every guarantee and the attempt counts."""
    figures = harness.measure(target, emu, 0)
    assert figures.problems() == [], figures
    assert figures.rows == rows
    assert attempt_mismatches(target, emu, max_attempts) == []


async def test_failed_lines_retried_with_right_attempt_count(
    sqlite_db: DbTarget, tmp_path: Path
) -> None:
    faults = FaultConfig(line_error_rate=0.25, line_timeout_rate=0.1, schema_break_rate=0.05,
                         length_rate=0.05)
    async with Emulator(EmulatorConfig(seed=41, faults=faults)) as emu:
        await harness.prepare(sqlite_db, harness.texts(80))
        summary = await run_engine(sqlite_db, emu, fast_settings(tmp_path, max_attempts=3),
                                   until_idle=True)
        await check(sqlite_db, emu, 80, 3)
    assert summary.counts["dead"] > 0, "with 45% failing lines some rows must run out"
    assert summary.counts["done"] > 60


async def test_http_429_bursts_500_503_and_dropped_connections(
    sqlite_db: DbTarget, tmp_path: Path
) -> None:
    faults = FaultConfig(http_429_rate=0.15, http_500_rate=0.1, http_503_rate=0.1,
                         drop_connection_rate=0.1, retry_after_s=0.02)
    async with Emulator(EmulatorConfig(seed=42, latency_s=0.05, faults=faults)) as emu:
        await harness.prepare(sqlite_db, harness.texts(60))

        async def bursts() -> None:
            # Every call refused with 429 + Retry-After for a while, three times over.
            for _ in range(3):
                await asyncio.sleep(0.15)
                emu.faults = FaultConfig(http_429_rate=1.0, retry_after_s=0.02)
                await asyncio.sleep(0.1)
                emu.faults = faults

        burst = asyncio.create_task(bursts())
        try:
            await run_engine(sqlite_db, emu, fast_settings(tmp_path, max_attempts=1),
                             until_idle=True)
        finally:
            await burst
        stats = emu.stats()
        # max_attempts=1: an HTTP fault that burned an attempt would leave a row dead.
        await check(sqlite_db, emu, 60, 1)
        counts = harness.measure(sqlite_db, emu, 0)
        assert counts.done == 60
    counters = str(stats)
    for fault in ("http_fault_429", "http_fault_500", "http_fault_503", "http_fault_drop"):
        assert fault in counters, f"{fault} never injected: {stats}"


async def test_enqueued_token_limit_resubmits_without_attempts(
    sqlite_db: DbTarget, tmp_path: Path
) -> None:
    faults = FaultConfig(enqueued_token_limit=2500)
    async with Emulator(EmulatorConfig(seed=43, latency_s=0.3, faults=faults)) as emu:
        await harness.prepare(sqlite_db, [f"text {i} " * 60 for i in range(30)])
        settings = fast_settings(tmp_path, batch_size=10, max_in_flight=3, max_attempts=1)
        await run_engine(sqlite_db, emu, settings, until_idle=True)
        await check(sqlite_db, emu, 30, 1)
        refused = [b for b in emu.record.batches.values() if b.status == "failed"]
    assert refused, "the limit should have refused some batches"


async def test_expiry_keeps_partial_results_and_retries_the_rest(
    sqlite_db: DbTarget, tmp_path: Path
) -> None:
    async with Emulator(EmulatorConfig(seed=44, faults=FaultConfig(expire_fraction=0.5))) as emu:
        await harness.prepare(sqlite_db, harness.texts(20))
        settings = fast_settings(tmp_path, batch_size=20, max_attempts=3)
        first = await run_engine(sqlite_db, emu, settings, num_batches=1)
        assert first.counts["done"] == 10
        emu.faults = FaultConfig()
        await run_engine(sqlite_db, emu, settings, until_idle=True)
        await check(sqlite_db, emu, 20, 3)
        attempts = sorted(int(a) for (a,) in fetch(
            sqlite_db.dsn, f"SELECT attempts FROM {sqlite_db.prefix}items"))
    # The expired half burned one attempt each; the finished half none.
    assert attempts == [0] * 10 + [1] * 10


async def test_cancellation_mid_flight_keeps_partial_results_and_burns_nothing(
    sqlite_db: DbTarget, tmp_path: Path
) -> None:
    async with Emulator(EmulatorConfig(seed=45, latency_s=1.0)) as emu:
        await harness.prepare(sqlite_db, harness.texts(30))
        settings = fast_settings(tmp_path, batch_size=15, max_in_flight=2, max_attempts=1)
        client = openai.AsyncOpenAI(api_key="sk-op", base_url=emu.base_url, max_retries=0)
        cancelled: list[str] = []

        async def operator() -> None:
            # Cancel the first batch once it is about half done, as an operator would.
            while not cancelled:
                for batch_id in list(emu.record.batches):
                    remote = await client.batches.retrieve(batch_id)
                    counts = remote.request_counts
                    if remote.status == "in_progress" and counts and 3 <= counts.completed < 12:
                        await client.batches.cancel(batch_id)
                        cancelled.append(batch_id)
                        break
                await asyncio.sleep(0.01)

        task = asyncio.create_task(operator())
        try:
            await run_engine(sqlite_db, emu, settings, until_idle=True)
        finally:
            task.cancel()
            (failure,) = await asyncio.gather(task, return_exceptions=True)
            await client.close()
        assert cancelled, f"no batch was cancelled mid-flight ({failure!r})"
        assert emu.record.batches[cancelled[0]].status == "cancelled"
        # max_attempts=1: a cancelled line that burned an attempt would be dead.
        await check(sqlite_db, emu, 30, 1)
        assert harness.measure(sqlite_db, emu, 0).done == 30
