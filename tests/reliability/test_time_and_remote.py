"""Time zones, an API that forgets, and creates that land late: still one remote batch each.

- The ``after_create`` crash point with the worker in a zone west and east of UTC and the
  database session in yet another zone (PGTZ, a MariaDB init statement): the restart finds
  the batch already created instead of creating a second one, and the source's processed
  time is UTC.
- An emulator that forgets every batch and file mid-run: ``run --until-idle`` (the CLI, as
  a user runs it) abandons the forgotten batches and finishes every row with no attempt used.
- A create held on the way longer than the client's timeout (a proxy between the engine and
  the emulator): one remote batch per local batch, or the late twin cancelled at once with
  none of its lines answered.

Remote batches are counted per local batch from the emulator's own batches (their
``engine_batch`` metadata), answers per source row from the output files it wrote.
"""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from engine.emulator import Emulator, EmulatorConfig
from tests.integration.helpers import fetch
from tests.reliability import harness
from tests.reliability.cli import cli, write_job
from tests.reliability.holdproxy import HoldingProxy
from tests.support import DbTarget

ROWS = 25
# Worker zone -> the database session's zone (the other side of UTC).
ZONES = {"America/Los_Angeles": ("Asia/Tokyo", "+09:00"),
         "Asia/Tokyo": ("America/Los_Angeles", "-08:00")}


def remote_per_local(emu: Emulator) -> Counter[str]:
    """How many remote batches the emulator accepted for each local batch id."""
    state = emu._live_state()
    return Counter((b.metadata or {}).get("engine_batch", "?") for b in state.batches.values())


def answered(emu: Emulator) -> Counter[str]:
    """Per source key, how many requests the emulator answered (an HTTP response, any status)."""
    state = emu._live_state()
    seen: Counter[str] = Counter()
    for batch in state.batches.values():
        for file_id in (batch.output_file_id, batch.error_file_id):
            stored = state.files.get(file_id or "")
            if stored is None:
                continue
            for line in stored.path.read_bytes().splitlines():
                row = json.loads(line) if line.strip() else {}
                if row.get("response") is not None:  # batch_cancelled lines answer nothing
                    seen[row["custom_id"].split("|", 2)[2]] += 1
    return seen


def zoned(target: DbTarget, worker_tz: str) -> tuple[DbTarget, dict[str, str]]:
    """The target with its database session in the zone opposite the worker's, and the env."""
    session_tz, offset = ZONES[worker_tz]
    env = {"TZ": worker_tz}
    if target.dialect == "postgresql":
        env["PGTZ"] = session_tz  # libpq sets the session's TimeZone from it
    elif target.dialect == "mysql":
        dsn = target.dsn.rstrip(";") + f";InitStmt=SET time_zone='{offset}';"
        target = DbTarget(target.dialect, dsn, target.prefix)
    return target, env


@pytest.mark.parametrize("worker_tz", sorted(ZONES))
async def test_after_create_restart_in_other_zones(
    db: DbTarget, worker_tz: str, tmp_path: Path
) -> None:
    target, env = zoned(db, worker_tz)
    async with Emulator(EmulatorConfig(seed=31, latency_s=0.05)) as emu:
        try:
            await harness.prepare(target, harness.texts(ROWS))
            spec = harness.spec_for(
                target, emu, worker_id="w1",
                settings=harness.fast(tmp_path / "spool", batch_size=10, max_in_flight=2),
            )
            crashed = await harness.run_worker(spec, crash_at="after_create", crash_after=2,
                                               env=env)
            assert crashed.killed, crashed.stderr[-2000:]
            restarts = await harness.run_until_resolved(target, spec, ROWS, env=env)
            figures = harness.measure(target, emu, restarts)
            assert figures.problems() == [], figures
            per_local = remote_per_local(emu)
            assert per_local, "no remote batch at all"
            assert set(per_local.values()) == {1}, (
                per_local, harness.explain_duplicates(target, emu))
            # The processed column got CURRENT_TIMESTAMP in the engine's (UTC) session.
            now = datetime.now(UTC).replace(tzinfo=None)
            for (stamp,) in fetch(target.dsn, f"SELECT processed FROM {target.prefix}src"):
                when = stamp if isinstance(stamp, datetime) else datetime.fromisoformat(stamp)
                assert abs(when.replace(tzinfo=None) - now) < timedelta(hours=1), when
        finally:
            harness.cleanup(target)


async def test_api_forgets_mid_run(db: DbTarget, tmp_path: Path) -> None:
    rows = 30
    async with Emulator(EmulatorConfig(seed=32, latency_s=3.0)) as emu:
        try:
            await harness.prepare(db, harness.texts(rows))
            job = write_job(tmp_path, db, engine={
                "max_in_flight": 2, "check_interval_s": 0.1,
                "remote_gone_polls": 3, "remote_gone_s": 0.5,
            })
            env = {"OPENAI_API_KEY": "sk-test-forget", "OPENAI_BASE_URL": emu.base_url}
            run = asyncio.create_task(cli("run", "--job", str(job), "--until-idle", env=env))
            await harness.wait_for_submitted(db, 2)  # every in-flight slot is held by a live batch
            forgotten = emu.forget()
            result = await run
            assert result.code == 0, result.stderr[-3000:]
            figures = harness.measure(db, emu, 1)
            assert figures.problems() == [], figures
            assert figures.done == rows
            attempts = fetch(db.dsn, f"SELECT MAX(attempts) FROM {db.prefix}items")
            assert int(attempts[0][0]) == 0  # forgotten batches used no attempt
            gone = fetch(db.dsn, f"SELECT id, error FROM {db.prefix}batches "
                         "WHERE state = 'abandoned'")
            assert len(forgotten) >= 2, forgotten
            assert len(gone) >= 2, gone
            assert all(" is gone: the API answered " in str(err) for _id, err in gone), gone
            status = await cli("status", "--job", str(job), "--json", env=env)
            assert status.code == 0, status
            assert "is gone" in status.stdout, status.stdout
            check = await cli("check", "--job", str(job), str(gone[0][0]), env=env)
            assert check.code == 0, check
            assert "is gone" in check.stdout, check.stdout
            cancel = await cli("cancel", "--job", str(job), str(gone[0][0]), env=env)
            assert cancel.code == 0, cancel
            assert "gone" in cancel.stdout, cancel.stdout
        finally:
            harness.cleanup(db)


async def test_create_held_past_the_timeout_is_found(db: DbTarget, tmp_path: Path) -> None:
    # Every create is held 3.5 s against a 2 s timeout: it lands while the engine still looks.
    async with Emulator(EmulatorConfig(seed=33, latency_s=0.2)) as emu:
        try:
            async with HoldingProxy(emu.base_url, hold_s=3.5) as proxy:
                await harness.prepare(db, harness.texts(ROWS))
                spec = harness.spec_for(
                    db, emu, worker_id="w1", base_url=proxy.base_url, api_timeout_s=2.0,
                    settings=harness.fast(tmp_path / "spool", batch_size=10, lease_s=10),
                )
                result = await harness.run_worker(spec)
                assert result.code == 0, result.stderr[-3000:]
            assert proxy.held >= 3
            figures = harness.measure(db, emu, 1)
            assert figures.problems() == [], figures
            per_local = remote_per_local(emu)
            assert len(per_local) == 3, per_local
            assert set(per_local.values()) == {1}, per_local
            assert max(answered(emu).values()) == 1
        finally:
            harness.cleanup(db)


async def test_create_landing_after_the_bound_is_cancelled(
    sqlite_db: DbTarget, tmp_path: Path
) -> None:
    db = sqlite_db
    # The first create lands 5 s after it was sent: after the 1 s timeout and the 1 s look.
    async with Emulator(EmulatorConfig(seed=34, latency_s=6.0)) as emu:
        async with HoldingProxy(emu.base_url, hold_s=5.0, holds=1) as proxy:
            await harness.prepare(db, harness.texts(10))
            spec = harness.spec_for(
                db, emu, worker_id="w1", base_url=proxy.base_url, api_timeout_s=1.0,
                log_level="WARNING",
                settings=harness.fast(tmp_path / "spool", batch_size=10, lease_s=10),
            )
            result = await harness.run_worker(spec)
            assert result.code == 0, result.stderr[-3000:]
        state = emu._live_state()
        remotes = list(state.batches.values())
        assert len(remotes) == 2, remotes
        live = [b for b in remotes if b.status not in ("cancelling", "cancelled")]
        twins = [b for b in remotes if b.status in ("cancelling", "cancelled")]
        assert len(live) == 1, [(b.id, b.status) for b in remotes]
        assert len(twins) == 1, [(b.id, b.status) for b in remotes]
        assert twins[0].completed == 0  # cancelled before it answered a line
        warned = [line for line in result.stderr.splitlines() if "same tag" in line]
        assert warned, result.stderr
        assert twins[0].id in warned[0], warned
        assert live[0].id in warned[0], warned
        assert max(answered(emu).values()) == 1
        figures = harness.measure(db, emu, 1)
    # The twin was live for the moment it took to find it: that overlap is the one allowed.
    assert [p for p in figures.problems() if not p.startswith("duplicate_live")] == []
    assert figures.done == 10


async def test_result_file_forgotten_after_finish(sqlite_db: DbTarget, tmp_path: Path) -> None:
    db = sqlite_db
    rows = 20
    async with Emulator(EmulatorConfig(seed=35, latency_s=0.05)) as emu:
        await harness.prepare(db, harness.texts(rows))
        settings = harness.fast(tmp_path / "spool", batch_size=10, remote_gone_polls=2,
                                remote_gone_s=0.2)
        spec = harness.spec_for(db, emu, worker_id="w1", settings=settings)
        # Killed once the first batch's output is downloaded, before anything is applied.
        crashed = await harness.run_worker(spec, crash_at="after_download")
        assert crashed.killed, crashed.stderr[-2000:]
        emu.forget()  # the restart's download answers 404
        restarts = await harness.run_until_resolved(db, spec, rows)
        figures = harness.measure(db, emu, restarts)
    # The forgotten batch had been answered (so paid) before the API forgot it: its rows are
    # sent again; nothing else may break.
    assert [p for p in figures.problems() if not p.startswith("double_billed")] == []
    assert figures.done == rows
    used = fetch(db.dsn, f"SELECT source_key, attempts FROM {db.prefix}items WHERE attempts > 0")
    assert used == [], (used, fetch(db.dsn, f"SELECT id, state, error FROM {db.prefix}batches"))
    gone = fetch(db.dsn, f"SELECT error FROM {db.prefix}batches WHERE state = 'abandoned'")
    assert gone, "no batch abandoned"
    assert all(" is gone: the API answered 404 " in str(err) for (err,) in gone), gone
    assert any("a result file of remote batch" in str(err) for (err,) in gone), gone


async def test_lease_held_east_is_adopted_west(server_db: DbTarget, tmp_path: Path) -> None:
    # Worker A's session is in Tokyo, B's in Los Angeles (17 h apart): B adopts A's batches
    # once A's 1.5 s lease has run out, not 17 hours later, and never while A holds them.
    east, east_env = zoned(server_db, "America/Los_Angeles")
    west, west_env = zoned(server_db, "Asia/Tokyo")
    async with Emulator(EmulatorConfig(seed=36, latency_s=0.5)) as emu:
        try:
            await harness.prepare(east, harness.texts(ROWS))
            settings = harness.fast(tmp_path / "spool", batch_size=10, max_in_flight=3)
            crashed = await harness.run_worker(
                harness.spec_for(east, emu, worker_id="wA", settings=settings),
                crash_at="mid_poll", env=east_env,
            )
            assert crashed.killed, crashed.stderr[-2000:]
            spec = harness.spec_for(west, emu, worker_id="wB", settings=settings)
            restarts = await harness.run_until_resolved(west, spec, ROWS, env=west_env,
                                                        max_rounds=4)
            figures = harness.measure(west, emu, restarts)
            assert figures.problems() == [], figures
            assert set(remote_per_local(emu).values()) == {1}
        finally:
            harness.cleanup(server_db)
