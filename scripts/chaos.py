#!/usr/bin/env python3
"""One bounded chaos run: several engine processes, SIGKILLs, crash points and API faults.

    .venv/bin/python scripts/chaos.py --size small --db sqlite
    .venv/bin/python scripts/chaos.py --size large --db postgresql

Workers (tests/reliability/worker.py subprocesses) share one database and one in-process
emulator that injects failed lines, timeouts, schema breaks, cut-off answers, HTTP 429 with
Retry-After, 500/503 and dropped connections. A seeded killer SIGKILLs random workers at
random moments, and some restarts die at a random crash point; killed workers come back under
the same id (immediate re-attach) or a new one (adoption after the lease). Some rows are
empty, so some end dead. The last line printed is the figures:

    rows=N done=N dead=N lost=0 double_applied=0 duplicate_live=0 restarts=N

Exit 0 when every guarantee held, 1 otherwise (the broken ones are named on stderr).
Sizes: small (CI) 300 rows, 3 workers, 5 kills; large 5,000 rows, 4 workers, 20 kills.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import random
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from engine import faults
from engine.emulator import Emulator, EmulatorConfig, FaultConfig
from tests.reliability import harness
from tests.support import MYSQL_DSN, PG_DSN, DbTarget


@dataclass(frozen=True)
class Size:
    """How big one run is."""

    rows: int
    workers: int
    kills: int
    batch_size: int
    timeout_s: float


SIZES = {
    "small": Size(rows=300, workers=3, kills=5, batch_size=20, timeout_s=100),
    "large": Size(rows=5000, workers=4, kills=20, batch_size=100, timeout_s=900),
}

FAULTS = FaultConfig(
    line_error_rate=0.04,
    line_timeout_rate=0.02,
    schema_break_rate=0.02,
    length_rate=0.02,
    http_429_rate=0.03,
    http_500_rate=0.02,
    http_503_rate=0.02,
    drop_connection_rate=0.01,
    retry_after_s=0.05,
)


def source_texts(rows: int, rng: random.Random) -> list[str | None]:
    """Mostly plain texts; about 2% NULL or blank, which must end dead with a reason."""
    out: list[str | None] = []
    for i in range(rows):
        roll = rng.random()
        if roll < 0.01:
            out.append(None)
        elif roll < 0.02:
            out.append("   ")
        else:
            out.append(f"row {i} name=Person{i} tags=a,b")
    return out


def target_for(db: str, workdir: Path) -> DbTarget:
    """Return the database of this run, with a fresh table prefix on servers."""
    if db == "sqlite":
        return DbTarget("sqlite", f"Driver=SQLite3;Database={workdir / 'chaos.db'}", "c_")
    prefix = f"chaos{uuid.uuid4().hex[:8]}_"
    return DbTarget(db, PG_DSN if db == "postgresql" else MYSQL_DSN, prefix)


def say(message: str) -> None:
    """Progress to stderr, so stdout ends with the figure line alone."""
    print(f"chaos: {message}", file=sys.stderr, flush=True)


async def chaos(size: Size, db: str, seed: int, workdir: Path) -> harness.Figures:
    """Run the scenario and return its figures."""
    rng = random.Random(seed)
    target = target_for(db, workdir)
    settings = harness.fast(
        workdir / "spool", batch_size=size.batch_size, max_in_flight=2, lease_s=4.0,
        max_attempts=6,
    )
    config = EmulatorConfig(seed=seed, latency_s=0.2, faults=FAULTS)
    async with Emulator(config) as emu:
        try:
            await harness.prepare(target, source_texts(size.rows, rng))
            return await _drive(size, target, emu, settings, rng)
        finally:
            harness.cleanup(target)


async def _drive(
    size: Size, target: DbTarget, emu: Emulator, settings: dict[str, object],
    rng: random.Random,
) -> harness.Figures:
    """Start, kill and restart workers until every row is resolved; measure."""
    live: dict[int, asyncio.subprocess.Process] = {}
    generation = dict.fromkeys(range(size.workers), 0)
    kills = restarts = 0
    deadline = time.monotonic() + size.timeout_s

    async def launch(slot: int) -> None:
        # Half the restarts keep their id (re-attach at once), half take a new one (adoption).
        if generation[slot] and rng.random() < 0.5:
            generation[slot] += 1
        worker_id = f"w{slot}-{generation[slot]}"
        crash: dict[str, object] = {}
        if kills < size.kills and rng.random() < 0.3:
            crash = {"crash_at": rng.choice(faults.CRASH_POINTS),
                     "crash_after": rng.randint(1, 3)}
        spec = harness.spec_for(target, emu, worker_id=worker_id, settings=settings)
        live[slot] = await harness.start_worker(spec, **crash)  # type: ignore[arg-type]
        if not generation[slot]:
            generation[slot] = 1

    for slot in range(size.workers):
        await launch(slot)
    try:
        while harness.unresolved(target, size.rows) > 0:
            if time.monotonic() > deadline:
                raise TimeoutError(f"not resolved within {size.timeout_s:.0f}s")
            await asyncio.sleep(rng.uniform(0.3, 1.2))
            if kills < size.kills and rng.random() < 0.5:
                running = [s for s, p in live.items() if p.returncode is None]
                if running:
                    live[rng.choice(running)].kill()
            for slot, proc in list(live.items()):
                if proc.returncode is None:
                    continue
                ended = await harness.finish(proc)
                if ended.killed:
                    kills += 1
                elif ended.code != 0:
                    say(f"worker {slot} failed ({ended.code}): {ended.stderr[-1500:]}")
                if harness.unresolved(target, size.rows) > 0:
                    restarts += 1
                    await launch(slot)
                else:
                    del live[slot]
            say(f"unresolved={harness.unresolved(target, size.rows)} kills={kills} "
                f"restarts={restarts}")
    finally:
        for proc in live.values():
            if proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
            await proc.wait()
    return harness.measure(target, emu, restarts)


def main(argv: list[str] | None = None) -> int:
    """Parse flags, run once, print the figure line last."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=sorted(SIZES), default="small")
    parser.add_argument("--db", choices=("sqlite", "postgresql", "mysql"), default="sqlite")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="chaos-") as tmp:
        figures = asyncio.run(chaos(SIZES[args.size], args.db, args.seed, Path(tmp)))
    problems = figures.problems()
    say(f"{args.size} on {args.db}, seed {args.seed}: {time.monotonic() - started:.0f}s"
        + (f"; BROKEN: {', '.join(problems)}" if problems else "; every guarantee held"))
    print(figures.line(), flush=True)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
