"""Mechanisms no other test caught when taken out (scripts/mutate.py names each one).

Each test drives real engine processes (or the CLI) against the emulator into the situation
its mechanism exists for, and checks the outcome from the database, the emulator's record and
the workers' logs, never from the mechanism itself:

- a live worker keeps its batches while they outlive the lease (the poller's lease renewal);
- an adopter waits out the previous owner's create still in flight (the settle wait);
- rows of a failed batch or missing from a short output file go back (the leftover resolve);
- a stalled worker's apply after a takeover changes nothing (the claim-token fence).

The multi-process scenarios are slow, so they run on SQLite and one server database.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import signal
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest

from engine import ApiSettings, ConfigError
from engine.batch_api import BatchApi
from engine.emulator import Emulator, EmulatorConfig, FaultConfig
from tests.integration.helpers import fetch
from tests.reliability import harness
from tests.reliability.cli import start_cli, write_job
from tests.support import DbTarget

KEY = "sk-test-guarantee-gaps"
_TALLY = re.compile(r"batch (\S+): (\d+) applied, (\d+) requeued, (\d+) dead, (\d+) stale")


async def _until(check: Callable[[], bool], what: str, timeout_s: float = 60) -> None:
    """Wait until check() is true, failing with ``what`` after timeout_s."""
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not seen within {timeout_s}s")
        await asyncio.sleep(0.05)


def _remote_per_local(emu: Emulator) -> Counter[str]:
    """Remote batches created per local batch id (the engine_batch metadata)."""
    state = emu._live_state()  # metadata is not in the record; the live state has it
    return Counter(
        (state.batches[b].metadata or {}).get("engine_batch", "?") for b in emu.record.batches
    )


def _batch_states(target: DbTarget) -> list[str]:
    """The state of every local batch."""
    return [str(r[0]) for r in fetch(target.dsn, f"SELECT state FROM {target.prefix}batches")]


def _stopped(pid: int) -> bool:
    """Whether a process is stopped by a signal (state T in /proc)."""
    with contextlib.suppress(FileNotFoundError):
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.rsplit(")", 1)[1].split()[0] in ("T", "t")
    return False


async def _end(proc: asyncio.subprocess.Process) -> None:
    """Make sure a worker this test started is gone (continued first if it was stopped)."""
    if proc.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGCONT)
            proc.kill()
        await proc.communicate()


@pytest.mark.parametrize("db", ["sqlite", "postgresql"], indirect=True)
@pytest.mark.timeout(300)
async def test_live_worker_keeps_its_batches(db: DbTarget, tmp_path: Path) -> None:
    """Batches live three times the lease: renewal alone keeps them with their worker.

    The heartbeat (defaults: 5 s beats, dead after 30 s) only ends a silent worker's leases,
    so it cannot hand a live worker's batch on; a lapsed lease does, at the next adoption.
    """
    rows = 40
    async with Emulator(EmulatorConfig(seed=171, latency_s=9.0)) as emu:
        try:
            await harness.prepare(db, harness.texts(rows))
            settings = harness.fast(tmp_path / "spool", lease_s=3.0, max_in_flight=2)
            procs = [
                await harness.start_worker(harness.spec_for(
                    db, emu, worker_id=f"w{i}", settings=settings, log_level="INFO"))
                for i in range(2)
            ]
            exits = [await harness.finish(p, timeout_s=150) for p in procs]
            for ended in exits:
                assert ended.code == 0, ended.stderr[-3000:]
            logs = "\n".join(e.stderr for e in exits)
            adopted = [line for line in logs.splitlines()
                       if "adopted batch" in line or "lease lost" in line]
            assert adopted == [], "a live worker's batch changed owner:\n" + "\n".join(adopted)
            per_local = _remote_per_local(emu)
            assert set(per_local.values()) == {1}, per_local
            figures = harness.measure(db, emu, restarts=0)
            assert figures.problems() == [], (figures, harness.explain_duplicates(db, emu, logs))
            assert figures.done == rows
        finally:
            harness.cleanup(db)


@pytest.mark.parametrize("db", ["sqlite", "mysql"], indirect=True)
@pytest.mark.timeout(300)
async def test_adopter_waits_for_a_create_in_flight(db: DbTarget, tmp_path: Path) -> None:
    """A worker dies with its create on the wire; the one that adopts it must not create again.

    The emulator holds each create for 8 s; worker A is killed while its create is held, so
    the create lands after A is gone. Worker B adopts A's uploaded batch once A's lease has
    run out (1.5 s), well before the create lands, and must find A's remote batch.
    """
    rows = 10
    faults = FaultConfig(create_delay_s=8.0)
    async with Emulator(EmulatorConfig(seed=172, latency_s=0.5, faults=faults)) as emu:
        try:
            await harness.prepare(db, harness.texts(rows))
            settings = harness.fast(tmp_path / "spool", lease_s=1.5)
            # A create timeout of 10 s: longer than the hold, and the adopter's wait short.
            spec_a = harness.spec_for(db, emu, worker_id="A", settings=settings,
                                      api_timeout_s=10)
            spec_b = dict(spec_a, worker_id="B", log_level="INFO")
            worker_a = await harness.start_worker(spec_a)
            try:
                await _until(lambda: emu.creates_held >= 1, "A's batches.create")
            finally:
                await _end(worker_a)
            assert not emu.record.batches, "the create landed before A was killed"
            ended = await harness.run_worker(spec_b)
            assert ended.code == 0, ended.stderr[-3000:]
            assert "adopted from A after upload" in ended.stderr, ended.stderr[-3000:]
            per_local = _remote_per_local(emu)
            assert list(per_local.values()) == [1], (
                f"remote batches per local batch: {dict(per_local)}\n"
                f"{harness.explain_duplicates(db, emu, ended.stderr)}"
            )
            figures = harness.measure(db, emu, restarts=1)
            assert figures.problems() == [], figures
            assert figures.done == rows
        finally:
            harness.cleanup(db)


@pytest.mark.timeout(300)
async def test_failed_batch_rows_go_back(db: DbTarget, tmp_path: Path) -> None:
    """Rows of a batch that failed validation (no result line at all) end done or dead.

    ``run --until-idle`` as a user runs it: the first batches fail validation, later ones
    complete. No row may stay ``submitted`` and the run must end. (A short output file is
    not this path: it is downloaded again, never taken as final; see test_whole_files.py.)
    """
    rows = 30
    faults = FaultConfig(fail_validation=True)
    async with Emulator(EmulatorConfig(seed=173, latency_s=0.2, faults=faults)) as emu:
        try:
            await harness.prepare(db, harness.texts(rows))
            job = write_job(tmp_path / "job", db, engine={"max_attempts": 4})
            env = {"OPENAI_API_KEY": KEY, "OPENAI_BASE_URL": emu.base_url}
            proc = await start_cli("run", "--job", str(job), "--until-idle", "--progress",
                                   "none", env=env)
            try:
                await _until(
                    lambda: any(b.status == "failed" for b in emu.record.batches.values()),
                    "a batch failing validation",
                )
                emu.faults = FaultConfig()
                out, err = await asyncio.wait_for(proc.communicate(), 120)
            except TimeoutError:
                raise AssertionError("run --until-idle hung (rows left submitted?): "
                                     f"{_batch_states(db)}") from None
            finally:
                await _end(proc)
            assert proc.returncode == 0, err.decode()[-3000:]
            statuses = Counter(b.status for b in emu.record.batches.values())
            assert statuses["failed"] >= 1, statuses
            assert statuses["completed"] >= 1, statuses
            stuck = fetch(db.dsn, f"SELECT COUNT(*) FROM {db.prefix}items "
                          "WHERE state NOT IN ('done', 'dead')")
            assert int(stuck[0][0]) == 0
            figures = harness.measure(db, emu, restarts=0)
            assert figures.problems() == [], (figures, out.decode()[-2000:])
            assert figures.done + figures.dead == rows
        finally:
            harness.cleanup(db)


@pytest.mark.parametrize("db", ["sqlite", "mysql"], indirect=True)
@pytest.mark.timeout(300)
async def test_stale_worker_apply_after_takeover(db: DbTarget, tmp_path: Path) -> None:
    """A worker frozen after its download, taken over, then thawed, must change nothing.

    Worker A stops itself (SIGSTOP) once its batch's output file is downloaded. B finds A's
    heartbeat silent, takes the batch over, applies it and sends the failed lines' rows out
    again in a new batch (new claim tokens). A is thawed while that batch is live and applies
    its stale files: the claim-token fence must refuse all of it. Without it, A would send
    B's in-flight rows back to pending, and they would go out a third time.
    """
    rows = 10
    faults = FaultConfig(line_error_rate=0.3)
    async with Emulator(EmulatorConfig(seed=174, latency_s=4.0, faults=faults)) as emu:
        try:
            await harness.prepare(db, harness.texts(rows))
            # A long lease: B takes over because A's heartbeat stops, not because a lease ran out.
            settings = harness.fast(tmp_path / "spool", lease_s=60.0, heartbeat_interval_s=0.5,
                                    worker_dead_after_s=2.0)
            spec_a = harness.spec_for(db, emu, worker_id="A", settings=settings, log_level="INFO")
            # Two machines: on one, B's cleanup after its apply deletes the output file that
            # A downloaded and has not read yet, and A fails on that before it applies.
            spec_b = dict(spec_a, worker_id="B",
                          settings=dict(settings, spool_dir=str(tmp_path / "spool-b")))
            worker_a = await harness.start_worker(spec_a, env={"ENGINE_STOP_AT": "after_download"})
            worker_b: asyncio.subprocess.Process | None = None
            try:
                await _until(lambda: _stopped(worker_a.pid), "A stopping after its download")
                worker_b = await harness.start_worker(spec_b)
                # B has applied A's batch and sent its failed rows out again.
                await _until(lambda: _batch_states(db).count("submitted") >= 1
                             and len(_batch_states(db)) >= 2, "B's batch of requeued rows")
                worker_a.send_signal(signal.SIGCONT)
                exit_a = await harness.finish(worker_a)
                exit_b = await harness.finish(worker_b)
            finally:
                await _end(worker_a)
                if worker_b is not None:
                    await _end(worker_b)
            assert exit_a.code == 0, exit_a.stderr[-3000:]
            assert exit_b.code == 0, exit_b.stderr[-3000:]
            tallies = [m.groups() for m in _TALLY.finditer(exit_a.stderr)]
            assert tallies, exit_a.stderr[-3000:]
            for _batch, applied, requeued, dead, stale in tallies:
                assert (applied, requeued, dead) == ("0", "0", "0"), exit_a.stderr[-3000:]
                assert int(stale) > 0
            figures = harness.measure(db, emu, restarts=0)
            logs = exit_a.stderr + exit_b.stderr
            assert figures.problems() == [], (figures, harness.explain_duplicates(db, emu, logs))
            assert figures.done + figures.dead == rows
        finally:
            harness.cleanup(db)


async def test_the_emulator_holds_creates_and_shortens_output_files(tmp_path: Path) -> None:
    """The two faults above do what the tests rely on (so those tests can fail for real)."""
    with pytest.raises(ConfigError):
        FaultConfig(short_output_lines=-1)
    with pytest.raises(ConfigError):
        FaultConfig(create_delay_s=-0.1)
    faults = FaultConfig(create_delay_s=0.5, short_output_lines=2)
    async with (
        Emulator(EmulatorConfig(seed=175, faults=faults)) as emu,
        BatchApi(ApiSettings(api_key=KEY, base_url=emu.base_url, timeout_s=10)) as api,
    ):
        path = tmp_path / "in.jsonl"
        path.write_text("".join(
            f'{{"custom_id": "c{i}", "method": "POST", "url": "/v1/chat/completions", "body": '
            f'{{"model": "gpt-4o-mini", "messages": [{{"role": "user", "content": "x{i}"}}]}}}}\n'
            for i in range(5)
        ))
        file_id = await api.upload_file(path)
        create = asyncio.create_task(api.create_batch(file_id, "/v1/chat/completions", {}))
        await _until(lambda: emu.creates_held == 1, "the held create")
        assert not emu.record.batches  # accepted, not landed yet
        batch = await create
        assert list(emu.record.batches) == [batch.id]
        await _until(lambda: emu.record.batches[batch.id].status == "completed", "completion")
        done = await api.retrieve_batch(batch.id)
        assert done.output_file_id is not None
        await api.download_file(done.output_file_id, tmp_path / "out.jsonl")
        assert len((tmp_path / "out.jsonl").read_text().splitlines()) == 3
