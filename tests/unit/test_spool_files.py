"""Spool primitives: private modes under any umask, full-disk errors, batch file names."""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from engine.errors import ConfigError, SpoolFullError
from engine.spool import (
    batch_files,
    disk_full_as_error,
    ensure_private_dir,
    open_private,
    spool_file_batch,
    try_lock,
    write_all,
)

BATCH = "0123456789abcdef0123456789abcdef"


@pytest.fixture(params=[0o000, 0o022, 0o077])
def umask(request: pytest.FixtureRequest) -> Iterator[int]:
    """Each umask a user may run under: none, the usual one, a strict one."""
    old = os.umask(request.param)
    try:
        yield request.param
    finally:
        os.umask(old)


def mode(path: Path) -> int:
    """Permission bits of a path."""
    return stat.S_IMODE(os.stat(path).st_mode)


def test_dirs_0700_with_parents_and_existing_ones_left_alone(tmp_path: Path, umask: int) -> None:
    existing = tmp_path / "shared"
    existing.mkdir(mode=0o755)
    os.chmod(existing, 0o755)
    made = ensure_private_dir(existing / "a" / "b" / "spool")
    for directory in (existing / "a", existing / "a" / "b", made):
        assert mode(directory) == 0o700, directory
    assert mode(existing) == 0o755  # not ours to change
    assert ensure_private_dir(made) == made  # again: nothing to do


def test_files_0600_even_when_they_existed_wider(tmp_path: Path, umask: int) -> None:
    path = tmp_path / "new" / f"t-{BATCH}.input.jsonl"
    with open_private(path) as out:
        write_all(out, [b"a\n", b"b\n"], path.parent)
    assert mode(path) == 0o600
    assert mode(path.parent) == 0o700
    os.chmod(path, 0o644)
    with open_private(path) as out:
        out.write(b"c\n")
    assert mode(path) == 0o600
    assert path.read_bytes() == b"c\n"


def test_a_file_being_written_is_locked_against_a_sweep(tmp_path: Path) -> None:
    path = tmp_path / "f"
    with open_private(path):
        assert try_lock(path) is None
    fd = try_lock(path)
    assert fd is not None
    os.close(fd)
    assert try_lock(tmp_path / "missing") is None


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EDQUOT])
def test_full_disk_or_quota_names_the_directory(tmp_path: Path, code: int) -> None:
    with pytest.raises(SpoolFullError) as caught, disk_full_as_error(tmp_path):
        raise OSError(code, os.strerror(code))
    message = str(caught.value)
    assert f"the spool directory {tmp_path} is full ({os.strerror(code)})" in message
    assert "--spool-dir" in message
    assert "nothing is lost" in message


def test_other_os_errors_are_not_called_a_full_disk(tmp_path: Path) -> None:
    with pytest.raises(PermissionError), disk_full_as_error(tmp_path):
        raise PermissionError(errno.EACCES, "denied")


def test_a_spool_dir_that_cannot_be_made_is_a_config_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(ConfigError, match="spool_dir: cannot create"):
        ensure_private_dir(blocker / "spool")


def test_batch_file_names() -> None:
    assert spool_file_batch("t", f"t-{BATCH}.input.jsonl") == BATCH
    assert spool_file_batch("t", f"t-{BATCH}.output.jsonl.part") == BATCH
    assert spool_file_batch("t", f"t-{BATCH}.input.tmp") == BATCH
    assert spool_file_batch("t", "t-dry-run.input.jsonl") is None
    assert spool_file_batch("t-2", f"t-{BATCH}.input.jsonl") is None  # another job's
    assert spool_file_batch("t", f"t-2-{BATCH}.input.jsonl") is None
    names = {p.name for p in batch_files(Path("/s"), "t", BATCH)}
    assert f"t-{BATCH}.error.jsonl.part" in names
    assert f"t-{BATCH}.output.tmp" in names
    assert all(spool_file_batch("t", name) == BATCH for name in names)
