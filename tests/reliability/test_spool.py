"""Personal data at rest: the spool is private, made when missing, emptied when batches end.

Driven as a user runs it: the CLI in a subprocess, the job's settings, umask 022 (the common
default, under which a plain open() makes 0644 files). Batch files hold the rows' text and the
model's answers, so every directory the engine makes is 0700 and every file 0600; a batch's
files go once it is applied or abandoned (``--keep-spool`` keeps them), files a crash left
behind go at the next run, and a full spool disk is one clear error, with nothing lost.
"""

from __future__ import annotations

import errno
import os
import signal
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from engine.emulator import Emulator, EmulatorConfig, FaultConfig
from engine.spool import spool_file_batch
from tests.integration.helpers import fetch
from tests.reliability import harness
from tests.reliability.cli import CliResult, cli, write_job
from tests.support import DbTarget

ROWS = 40
WORKER = ["--worker-id", "w-spool"]


@pytest.fixture
def umask_022() -> Iterator[None]:
    """Run the CLI children under umask 022, as a login shell usually does."""
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)


def mode(path: Path) -> int:
    """Permission bits of a path."""
    return stat.S_IMODE(os.stat(path).st_mode)


def files_in(directory: Path) -> list[Path]:
    """Regular files under a directory."""
    return sorted(p for p in directory.rglob("*") if p.is_file())


def env_for(emu: Emulator, **extra: str) -> dict[str, str]:
    """The environment a user sets: the key and the API's address."""
    return {"OPENAI_API_KEY": "sk-test-spool", "OPENAI_BASE_URL": emu.base_url, **extra}


def assert_all_done_once(target: DbTarget, emu: Emulator, restarts: int) -> harness.Figures:
    """Every row done or dead, none lost, none applied or billed twice."""
    figures = harness.measure(target, emu, restarts)
    assert figures.problems() == [], figures
    assert figures.done == ROWS, figures
    return figures


async def test_spool_private_through_sigkills_and_emptied_when_batches_end(
    db: DbTarget, tmp_path: Path, umask_022: None
) -> None:
    """Killed mid-run: files 0600, new dirs 0700, none of an ended batch; none left at the end."""
    async with Emulator(EmulatorConfig(seed=91, latency_s=0.2)) as emu:
        try:
            await harness.prepare(db, harness.texts(ROWS))
            job = write_job(tmp_path / "job", db)
            spool = tmp_path / "made" / "by" / "engine" / "spool"  # none of it exists yet
            # One batch at a time, so each kill finds a known state.
            args = ("run", "--job", str(job), "--until-idle", "--spool-dir", str(spool),
                    "--max-in-flight", "1", *WORKER)
            # 1. SIGKILL while the second batch is being applied; the first one is applied.
            first = await cli(*args, env=env_for(emu, ENGINE_CRASH_AT="mid_apply",
                                                  ENGINE_CRASH_AFTER="2"))
            assert first.code == -signal.SIGKILL, first.stderr[-3000:]
            for directory in (tmp_path / "made", spool.parent.parent, spool.parent, spool):
                assert mode(directory) == 0o700, directory
            left = files_in(spool)
            assert {p.name.split(".")[-2] for p in left} == {"input", "output"}, left
            assert {p: mode(p) for p in left} == {p: 0o600 for p in left}
            assert _files_of_ended_batches(db, left) == []
            # 2. SIGKILL right after the next draft's rows are claimed: its file has no batch.
            second = await cli(*args, env=env_for(emu, ENGINE_CRASH_AT="after_claim"))
            assert second.code == -signal.SIGKILL, second.stderr[-3000:]
            left = files_in(spool)
            assert {p: mode(p) for p in left} == {p: 0o600 for p in left}
            assert _files_of_ended_batches(db, left) == []
            known = {str(r[0]) for r in fetch(db.dsn, f"SELECT id FROM {db.prefix}batches")}
            assert [p for p in left if spool_file_batch("t", p.name) not in known], left
            # 3. The rerun finishes every row once and leaves nothing behind.
            rerun = await cli(*args, env=env_for(emu))
            assert rerun.code == 0, rerun.stderr[-3000:]
            assert_all_done_once(db, emu, restarts=2)
            assert files_in(spool) == []
            assert mode(spool) == 0o700
        finally:
            harness.cleanup(db)


def _files_of_ended_batches(target: DbTarget, files: list[Path]) -> list[Path]:
    """The files among ``files`` whose batch is applied or abandoned."""
    ended = {
        str(r[0]) for r in fetch(
            target.dsn, f"SELECT id FROM {target.prefix}batches "
            "WHERE state IN ('applied', 'abandoned')",
        )
    }
    assert ended, "no batch had ended: the kill came too early to tell"
    return [p for p in files if spool_file_batch("t", p.name) in ended]


async def test_keep_spool_keeps_private_files_whatever_the_umask(
    sqlite_db: DbTarget, tmp_path: Path
) -> None:
    """--keep-spool keeps input, output and error files, each 0600 even under umask 000."""
    faults = FaultConfig(line_error_rate=0.3)  # so error files are written too
    old = os.umask(0)
    try:
        async with Emulator(EmulatorConfig(seed=92, faults=faults)) as emu:
            await harness.prepare(sqlite_db, harness.texts(ROWS))
            job = write_job(tmp_path / "job", sqlite_db)
            spool = tmp_path / "kept"
            result = await cli("run", "--job", str(job), "--until-idle", "--keep-spool",
                               "--spool-dir", str(spool), env=env_for(emu))
            assert result.code == 0, result.stderr[-3000:]
            left = files_in(spool)
            kinds = {p.name.split(".")[-2] for p in left}
            assert kinds == {"input", "output", "error"}, left
            assert {p: mode(p) for p in left} == {p: 0o600 for p in left}
            assert mode(spool) == 0o700
            # Without the flag the next run removes what the ended batches left.
            again = await cli("run", "--job", str(job), "--until-idle",
                              "--spool-dir", str(spool), env=env_for(emu))
            assert again.code == 0, again.stderr[-3000:]
            assert files_in(spool) == []
    finally:
        os.umask(old)


async def test_adopted_batches_download_into_a_spool_that_did_not_exist(
    db: DbTarget, tmp_path: Path, umask_022: None
) -> None:
    """A worker whose --spool-dir is missing makes it (0700) and finishes adopted batches."""
    async with Emulator(EmulatorConfig(seed=93)) as emu:
        try:
            await harness.prepare(db, harness.texts(ROWS))
            job = write_job(tmp_path / "job", db)
            first = await cli("submit", "--job", str(job), "--spool-dir",
                              str(tmp_path / "first"), env=env_for(emu))
            assert first.code == 0, first.stderr[-3000:]
            other = tmp_path / "other" / "spool"
            # One slot, held by the adopted batch: its download is the first write.
            run = await cli("run", "--job", str(job), "--until-idle", "--spool-dir", str(other),
                            "--max-in-flight", "1", env=env_for(emu))
            assert run.code == 0, run.stderr[-3000:]
            assert_all_done_once(db, emu, restarts=1)
            assert mode(other) == 0o700
            assert mode(other.parent) == 0o700
            assert files_in(other) == []
        finally:
            harness.cleanup(db)


def _mount_tmpfs(where: Path, size: str) -> None:
    """Mount a small tmpfs, or skip the test saying why it cannot."""
    where.mkdir()
    try:
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs",
                               str(where)], capture_output=True, text=True, timeout=30)
    except FileNotFoundError:
        pytest.skip("no mount command: cannot make a small filesystem for the spool")
    if done.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs (needs root): {done.stderr.strip()}")


def _fill(directory: Path) -> Path:
    """Write a file until the filesystem has no room left; return it."""
    filler = directory / "filler"
    with filler.open("wb", buffering=0) as out:
        try:
            while True:
                out.write(b"\0" * 4096)
        except OSError as exc:
            if exc.errno != errno.ENOSPC:
                raise
    return filler


def assert_clear_full_disk_error(result: CliResult, spool: Path) -> None:
    """Exit 1, one line naming the directory and what to do, no traceback."""
    assert result.code == 1, result.stderr[-3000:]
    assert f"the spool directory {spool} is full (No space left on device)" in result.stderr
    assert "--spool-dir" in result.stderr
    assert "nothing is lost" in result.stderr
    assert "Traceback" not in result.stderr, result.stderr[-3000:]


async def test_full_spool_disk_is_a_clear_error_and_nothing_is_lost(
    db: DbTarget, tmp_path: Path, umask_022: None
) -> None:
    """ENOSPC while drafting and while downloading: exit 1 with what to do; a rerun finishes."""
    mount = tmp_path / "tiny"
    _mount_tmpfs(mount, "256k")
    try:
        async with Emulator(EmulatorConfig(seed=94)) as emu:
            try:
                await harness.prepare(db, harness.texts(ROWS))
                job = write_job(tmp_path / "job", db, engine={"batch_size": ROWS})
                spool = mount / "spool"
                spool.mkdir()
                filler = _fill(mount)
                run = ("run", "--job", str(job), "--until-idle", "--spool-dir", str(spool))
                # 1. No room for a draft: the claims are given back.
                drafting = await cli(*run, env=env_for(emu))
                assert_clear_full_disk_error(drafting, spool)
                claimed = fetch(db.dsn, f"SELECT COUNT(*) FROM {db.prefix}items "
                                f"WHERE state = 'claimed'")
                assert claimed[0][0] == 0
                # 2. A batch submitted from elsewhere finishes; no room for its answers.
                submitted = await cli("submit", "--job", str(job), "--spool-dir",
                                      str(tmp_path / "roomy"), env=env_for(emu))
                assert submitted.code == 0, submitted.stderr[-3000:]
                downloading = await cli(*run, env=env_for(emu))
                assert_clear_full_disk_error(downloading, spool)
                # 3. With room again, one rerun finishes every row exactly once.
                filler.unlink()
                rerun = await cli(*run, env=env_for(emu))
                assert rerun.code == 0, rerun.stderr[-3000:]
                assert_all_done_once(db, emu, restarts=2)
                assert files_in(spool) == []
            finally:
                harness.cleanup(db)
    finally:
        subprocess.run(["umount", str(mount)], capture_output=True, timeout=30)
