"""Dead workers are found in seconds (DESIGN guarantee 11), with the settings a user leaves alone.

Workers run as ``python -m engine run`` subprocesses with the job file's default timing: a
random worker id, the 600 s lease, 5 s heartbeats and the 30 s dead bound. Killed with
SIGKILL while their batches are in flight, their work is taken over by the next
``run --until-idle`` once their heartbeats stop, not when their leases end ten minutes later;
and an until-idle run beside a live worker returns naming that worker's batches and rows
instead of waiting for them or taking them over.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from pathlib import Path

import pytest

from engine.emulator import Emulator, EmulatorConfig
from tests.integration.helpers import fetch
from tests.reliability import harness
from tests.reliability.cli import cli, start_cli, write_job
from tests.support import DbTarget

ROWS = 60
KEY = "sk-test-dead-workers"


@pytest.mark.timeout(400)
async def test_sigkill_then_until_idle_finishes_with_default_settings(
    db: DbTarget, tmp_path: Path
) -> None:
    # Batches stay in progress for 3 s, so the kills find them live.
    async with Emulator(EmulatorConfig(seed=41, latency_s=3.0)) as emu:
        try:
            await harness.prepare(db, harness.texts(ROWS))
            job = write_job(tmp_path / "job", db, default_timing=True)
            env = {"OPENAI_API_KEY": KEY, "OPENAI_BASE_URL": emu.base_url}
            workers = [await start_cli("run", "--job", str(job), "--progress", "none",
                                       env=env) for _ in range(3)]
            try:
                await harness.wait_for_submitted(db, 4)
            finally:
                for proc in workers:
                    with contextlib.suppress(ProcessLookupError):
                        proc.send_signal(signal.SIGKILL)
                    await proc.communicate()
            left = harness.unresolved(db, ROWS)
            assert left > 0, "the workers finished before they were killed"
            started = time.monotonic()
            result = await cli("run", "--job", str(job), "--until-idle", "--progress", "none",
                               env=env, timeout_s=150)
            took = time.monotonic() - started
            assert result.code == 0, result.stderr[-3000:]
            figures = harness.measure(db, emu, restarts=1)
            assert figures.problems() == [], (figures, result.stderr[-3000:])
            assert figures.done == ROWS
            assert "still held by live workers" not in result.stdout, result.stdout
            print(f"{db.dialect}: {left} unfinished rows of 3 killed workers finished by one "
                  f"run --until-idle in {took:.1f}s (lease 600 s, dead after 30 s)")
        finally:
            harness.cleanup(db)


@pytest.mark.timeout(300)
async def test_until_idle_beside_a_live_worker_names_it(db: DbTarget, tmp_path: Path) -> None:
    # Long batches: the live worker still holds them when the second run looks.
    async with Emulator(EmulatorConfig(seed=42, latency_s=60.0)) as emu:
        try:
            rows = 40  # 4 batches of 10: all of them claimed by the first worker
            await harness.prepare(db, harness.texts(rows))
            job = write_job(tmp_path / "job", db, default_timing=True)
            env = {"OPENAI_API_KEY": KEY, "OPENAI_BASE_URL": emu.base_url}
            live = await start_cli("run", "--job", str(job), "--progress", "none",
                                   "--worker-id", "live-one", env=env)
            try:
                await harness.wait_for_submitted(db, 4)
                result = await cli("run", "--job", str(job), "--until-idle", "--progress",
                                   "none", "--worker-id", "second", env=env, timeout_s=120)
                assert result.code == 0, result.stderr[-3000:]
                last = result.stdout.strip().splitlines()[-1]
                assert last == "run: still held by live workers: live-one (4 batches, 40 rows)"
                owners = fetch(db.dsn, f"SELECT DISTINCT worker_id FROM {db.prefix}batches")
                assert [str(r[0]) for r in owners] == ["live-one"]
            finally:
                live.send_signal(signal.SIGTERM)
                await asyncio.wait_for(live.communicate(), 90)
        finally:
            harness.cleanup(db)
