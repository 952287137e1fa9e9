"""SIGKILL at every stage boundary and at random moments; restarts lose and double nothing.

Each engine is a real subprocess (tests/reliability/worker.py) that kills itself at a named
crash point (ENGINE_CRASH_AT) or is killed from outside, then restarted until idle. The
figures (tests/reliability/harness.py) must show every row done once, none lost, and no
source key in two live remote batches.
"""

from __future__ import annotations

import os
import random
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from engine import faults
from engine.emulator import Emulator, EmulatorConfig
from tests.reliability import harness
from tests.support import DbTarget

# RELIABILITY_SIZE=large kills more often and runs more rows (documented in the report).
LARGE = os.environ.get("RELIABILITY_SIZE") == "large"
ROWS = 25
RANDOM_KILLS = 6 if LARGE else 3


@pytest.fixture(params=["sqlite", "postgresql", "mysql"])
def crash_db(request: pytest.FixtureRequest, tmp_path: Path) -> DbTarget:
    """SQLite, PostgreSQL and MariaDB: every database the engine runs on in CI."""
    if request.param == "sqlite":
        return DbTarget("sqlite", f"Driver=SQLite3;Database={tmp_path / 'engine.db'}", "t_")
    from tests.support import MYSQL_DSN, PG_DSN, _target

    return _target(request.param, PG_DSN if request.param == "postgresql" else MYSQL_DSN)


@pytest.fixture
async def emu() -> AsyncIterator[Emulator]:
    # A little latency so batches are live while other things happen.
    async with Emulator(EmulatorConfig(seed=21, latency_s=0.05)) as emulator:
        yield emulator


@pytest.mark.parametrize("point", faults.CRASH_POINTS)
async def test_sigkill_at_each_crash_point(
    point: str, crash_db: DbTarget, emu: Emulator, tmp_path: Path
) -> None:
    target = crash_db
    try:
        await harness.prepare(target, harness.texts(ROWS))
        spec = harness.spec_for(
            target, emu, worker_id="w1",
            settings=harness.fast(tmp_path / "spool", batch_size=10, max_in_flight=2),
        )
        # The second time the point is reached: one batch is already on its way.
        crashed = await harness.run_worker(spec, crash_at=point, crash_after=2)
        assert crashed.killed, f"never reached {point}: {crashed.code}\n{crashed.stderr[-2000:]}"
        restarts = await harness.run_until_resolved(target, spec, ROWS)
        figures = harness.measure(target, emu, restarts)
        assert figures.problems() == [], (point, figures)
        assert figures.done == ROWS
    finally:
        harness.cleanup(target)


async def test_sigkill_at_random_moments(
    crash_db: DbTarget, tmp_path: Path
) -> None:
    target = crash_db
    rng = random.Random(7)
    async with Emulator(EmulatorConfig(seed=22, latency_s=0.1)) as emu:
        try:
            rows = 60
            await harness.prepare(target, harness.texts(rows))
            spool = tmp_path / "spool"
            for kill in range(RANDOM_KILLS):
                # Alternate ids: a restart under the same id adopts at once, another one after
                # the lease, so both recovery paths are taken.
                spec = harness.spec_for(
                    target, emu, worker_id=f"w{kill % 2}",
                    settings=harness.fast(spool, batch_size=8, max_in_flight=3),
                )
                proc = await harness.start_worker(spec)
                ended = await harness.kill_after(proc, rng.uniform(0.4, 2.0))
                assert ended.killed or ended.code == 0, ended.stderr[-2000:]
            spec = harness.spec_for(target, emu, worker_id="w0",
                                    settings=harness.fast(spool, batch_size=8))
            restarts = await harness.run_until_resolved(target, spec, rows)
            figures = harness.measure(target, emu, RANDOM_KILLS + restarts)
            assert figures.problems() == [], figures
            assert figures.done == rows
        finally:
            harness.cleanup(target)
