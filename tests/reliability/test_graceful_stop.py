"""Stopping ``python -m engine run`` as a user does, with batches in flight.

SIGINT (Ctrl-C) and SIGTERM during a run are a graceful stop (README, "One long-running
process"): no new claims, in-flight steps reach a safe point, live batches are left for the next
run, and the process exits 0. An interrupt before the run reached a safe point (here: while
the API check still waits for an answer) exits 130. Either way nothing is lost: the next
``run --until-idle`` finishes every row exactly once, re-attaching to the live batches instead
of paying for them again.
"""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

import pytest

from engine.emulator import Emulator, EmulatorConfig
from tests.integration.helpers import fetch
from tests.reliability import harness
from tests.reliability.cli import cli, start_cli, write_job
from tests.support import DbTarget

ROWS = 40  # 4 batches of 10
KEY = "sk-test-graceful-stop"


async def _finish_and_measure(db: DbTarget, emu: Emulator, job: Path, env: dict[str, str]) -> None:
    """Run until idle once more; every row must be done exactly once, nothing lost or doubled."""
    result = await cli("run", "--job", str(job), "--until-idle", "--progress", "none", env=env,
                       timeout_s=120)
    assert result.code == 0, result.stderr[-3000:]
    figures = harness.measure(db, emu, restarts=1)
    assert figures.problems() == [], (figures, result.stderr[-3000:])
    assert figures.done == ROWS


@pytest.mark.timeout(300)
async def test_sigterm_with_batches_in_flight_stops_gracefully(
    db: DbTarget, tmp_path: Path
) -> None:
    await _stop_with_batches_in_flight(db, tmp_path, signal.SIGTERM)


@pytest.mark.timeout(300)
async def test_ctrl_c_with_batches_in_flight_stops_gracefully(
    sqlite_db: DbTarget, tmp_path: Path
) -> None:
    # The same handler as SIGTERM, so one database is enough to keep CI short.
    await _stop_with_batches_in_flight(sqlite_db, tmp_path, signal.SIGINT)


async def _stop_with_batches_in_flight(db: DbTarget, tmp_path: Path, sig: signal.Signals) -> None:
    """Signal a run once two batches are live; it exits 0 and the next run finishes."""
    # Batches stay in progress for 3 s: the signal finds them live.
    async with Emulator(EmulatorConfig(seed=91, latency_s=3.0)) as emu:
        try:
            await harness.prepare(db, harness.texts(ROWS))
            job = write_job(tmp_path / "job", db, engine={"max_in_flight": 4})
            env = {"OPENAI_API_KEY": KEY, "OPENAI_BASE_URL": emu.base_url}
            proc = await start_cli("run", "--job", str(job), "--progress", "none",
                                   "--worker-id", "stopped", env=env)
            try:
                await harness.wait_for_submitted(db, 2)
            finally:
                proc.send_signal(sig)
            out, err = await asyncio.wait_for(proc.communicate(), 60)
            assert proc.returncode == 0, err.decode()[-3000:]
            assert out.decode().startswith("run: "), out.decode()
            # The stop did not wait for the live batches: they are still live remotely, left
            # for the next run, and their rows are not done yet.
            live = fetch(db.dsn, f"SELECT COUNT(*) FROM {db.prefix}batches "
                         "WHERE state = 'submitted'")[0][0]
            assert live >= 2
            assert harness.unresolved(db, ROWS) > 0
            await _finish_and_measure(db, emu, job, env)
        finally:
            harness.cleanup(db)


async def _hold_connections(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, seen: asyncio.Event
) -> None:
    """Accept a connection and never answer it (an API that hangs)."""
    seen.set()
    try:
        await reader.read()  # until the client goes away
    finally:
        writer.close()


@pytest.mark.timeout(200)
async def test_sigint_before_a_safe_point_exits_130(sqlite_db: DbTarget, tmp_path: Path) -> None:
    seen = asyncio.Event()
    server = await asyncio.start_server(
        lambda r, w: _hold_connections(r, w, seen), "127.0.0.1", 0
    )
    port = server.sockets[0].getsockname()[1]
    async with Emulator(EmulatorConfig(seed=92)) as emu:
        await harness.prepare(sqlite_db, harness.texts(ROWS))
        job = write_job(tmp_path / "job", sqlite_db)
        hung = {"OPENAI_API_KEY": KEY, "OPENAI_BASE_URL": f"http://127.0.0.1:{port}/v1"}
        proc = await start_cli("run", "--job", str(job), "--progress", "none", env=hung)
        try:
            # The run is waiting on the API check: it has claimed nothing yet.
            await asyncio.wait_for(seen.wait(), 60)
        finally:
            proc.send_signal(signal.SIGINT)
        _out, err = await asyncio.wait_for(proc.communicate(), 60)
        server.close()
        await server.wait_closed()
        assert proc.returncode == 130, err.decode()[-3000:]
        assert err.decode().strip().splitlines()[-1] == "interrupted"
        claimed = fetch(sqlite_db.dsn, f"SELECT COUNT(*) FROM {sqlite_db.prefix}items "
                        "WHERE state <> 'pending'")[0][0]
        assert claimed == 0
        assert fetch(sqlite_db.dsn, f"SELECT COUNT(*) FROM {sqlite_db.prefix}batches")[0][0] == 0
        await _finish_and_measure(sqlite_db, emu, job,
                                  {"OPENAI_API_KEY": KEY, "OPENAI_BASE_URL": emu.base_url})
