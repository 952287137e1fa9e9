"""template_answers: every line answered like the batch's first, the engine none the wiser."""

from __future__ import annotations

from pathlib import Path

from engine.emulator import Emulator, EmulatorConfig, FaultConfig
from engine.engine import Engine
from tests.integration.helpers import api_for, fast_settings, fetch, prepared
from tests.support import DbTarget


async def test_engine_applies_every_templated_answer(sqlite_db: DbTarget, tmp_path: Path) -> None:
    async with Emulator(EmulatorConfig(seed=4, template_answers=True)) as emu:
        job, store_settings = await prepared(sqlite_db, [f"text {i}" for i in range(25)])
        async with Engine(job, store=store_settings, api=api_for(emu),
                          settings=fast_settings(tmp_path)) as engine:
            summary = await engine.run(until_idle=True)
        stats = emu.stats()
    assert summary.counts["done"] == 25
    assert stats["counters"]["lines_processed"] == 25
    names = {row[0] for row in fetch(sqlite_db.dsn, f"SELECT out_name FROM {job.source.table}")}
    assert len(names) <= 3  # one answer per batch of 10, reused


async def test_faults_still_drawn_line_by_line(sqlite_db: DbTarget, tmp_path: Path) -> None:
    config = EmulatorConfig(seed=4, template_answers=True,
                            faults=FaultConfig(schema_break_rate=1.0))
    async with Emulator(config) as emu:
        job, store_settings = await prepared(sqlite_db, [f"text {i}" for i in range(5)])
        async with Engine(job, store=store_settings, api=api_for(emu),
                          settings=fast_settings(tmp_path, max_attempts=1)) as engine:
            summary = await engine.run(until_idle=True)
    assert summary.counts["dead"] == 5
