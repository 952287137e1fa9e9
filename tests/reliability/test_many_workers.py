"""Four engine processes on one server database and one emulator; one is killed mid-way.

The others (or, if they ran out of work first, a restart after the lease) finish its rows once
its lease has expired. Every row ends done or dead, once, and no source key was ever in two
live remote batches.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

from engine.emulator import Emulator, EmulatorConfig
from tests.integration.helpers import fetch
from tests.reliability import harness
from tests.support import DbTarget

# The 5,000 rows by default; RELIABILITY_ROWS makes a quicker or larger run.
ROWS = int(os.environ.get("RELIABILITY_ROWS", "5000"))
WORKERS = 4


async def _done(target: DbTarget) -> int:
    rows = await asyncio.to_thread(
        fetch, target.dsn,
        f"SELECT COUNT(*) FROM {target.prefix}items WHERE state = 'done'",
    )
    return int(rows[0][0])


async def test_four_workers_one_killed_midway(
    server_db: DbTarget, tmp_path: Path
) -> None:
    target = server_db
    async with Emulator(EmulatorConfig(seed=31, latency_s=0.2)) as emu:
        try:
            await harness.prepare(target, harness.texts(ROWS))
            settings = harness.fast(
                tmp_path / "spool", batch_size=max(10, ROWS // 40), max_in_flight=2,
                # Longer than any one API call takes on a loaded 2-core CI box: a live worker
                # whose lease lapses mid-create can be doubled by an adopter (see the report).
                lease_s=5.0,
            )
            specs = [
                harness.spec_for(target, emu, worker_id=f"m{i}", settings=settings,
                                 log_level="INFO")
                for i in range(WORKERS)
            ]
            procs = [await harness.start_worker(spec) for spec in specs]
            victim = procs[0]
            # Kill the first worker once about a third of the rows are done: it then holds
            # claims and live batches that only lease expiry can hand over.
            while await _done(target) < ROWS // 3 and victim.returncode is None:
                await asyncio.sleep(0.1)
            victim.kill()
            await victim.wait()
            held = {str(r[0]) for r in fetch(
                target.dsn, f"SELECT id FROM {target.prefix}batches WHERE "
                "worker_id = 'm0' AND state NOT IN ('applied', 'abandoned')")}
            exits = [await harness.finish(p, timeout_s=110) for p in procs]
            assert exits[0].killed, "the victim finished before it could be killed"
            for survivor in exits[1:]:
                assert survivor.code == 0, survivor.stderr[-3000:]
            left = harness.unresolved(target, ROWS)
            restarts = 0
            if left:
                sweeper = harness.spec_for(target, emu, worker_id="sweeper", settings=settings)
                restarts = await harness.run_until_resolved(target, sweeper, ROWS)
            figures = harness.measure(target, emu, restarts)
            logs = "\n".join(f"[{i}] {line}" for i, e in enumerate(exits)
                             for line in e.stderr.splitlines())
            assert figures.problems() == [], (
                f"{figures}\n{harness.explain_duplicates(target, emu, logs)}"
            )
            assert figures.done == ROWS
            # The victim's batches went on under other workers.
            batches = fetch(target.dsn,
                            f"SELECT worker_id, state FROM {target.prefix}batches")
            assert all(state in ("applied", "abandoned") for _, state in batches), batches
            # Each batch the victim held was adopted (adoption moves it to the adopter).
            left_with_victim = {str(r[0]) for r in fetch(
                target.dsn, f"SELECT id FROM {target.prefix}batches WHERE worker_id = 'm0'")}
            assert held & left_with_victim == set(), (held, left_with_victim)
        finally:
            harness.cleanup(target)
