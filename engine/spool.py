"""The spool: local batch files (requests in, answers out) hold personal data, so they are private.

Every directory the engine creates for them is 0700 and every file 0600, whatever the process
umask. A batch's files live until the batch is applied or abandoned (``keep_spool_files``
keeps them); a full disk is one clear error naming the directory, never a traceback.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import io
import logging
import os
import re
import stat
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import BinaryIO

from engine.errors import ConfigError, SpoolFullError

__all__ = [
    "DIR_MODE",
    "FILE_MODE",
    "SUFFIXES",
    "batch_files",
    "disk_full_as_error",
    "ensure_private_dir",
    "open_private",
    "spool_file_batch",
    "try_lock",
    "write_all",
]

log = logging.getLogger("engine.spool")

DIR_MODE = 0o700
FILE_MODE = 0o600
# The kinds of file one batch has: its request lines, then the two result files.
SUFFIXES = ("input", "output", "error")
# Errors that mean the disk (or the user's quota on it) has no room left.
_FULL = frozenset({errno.ENOSPC, errno.EDQUOT})
# Files a batch leaves, whole or half-written: NAME.input.jsonl, NAME.output.jsonl.part, ...
_BATCH_FILE = r"-([0-9a-f]{32})\.(?:input|output|error)\.(?:jsonl|jsonl\.part|tmp)"


def ensure_private_dir(path: Path) -> Path:
    """Create ``path`` and its missing parents, each 0700; leave existing ones as they are."""
    path = Path(path)
    missing: list[Path] = []
    probe = path
    while not probe.exists():
        missing.append(probe)
        if probe.parent == probe:
            break
        probe = probe.parent
    for directory in reversed(missing):
        with disk_full_as_error(directory.parent):
            try:
                directory.mkdir(mode=DIR_MODE)
            except FileExistsError:  # another worker made it meanwhile: theirs, not ours
                continue
            except (PermissionError, NotADirectoryError) as exc:
                raise ConfigError(
                    f"spool_dir: cannot create {directory}: {exc.strerror}"
                ) from None
            os.chmod(directory, DIR_MODE)  # mkdir's mode is cut by the umask
    return path


def warn_if_shared(path: Path) -> None:
    """Log a warning when an existing spool directory lets other users in."""
    with contextlib.suppress(OSError):
        mode = stat.S_IMODE(os.stat(path).st_mode)
        if mode & 0o077:
            log.warning(
                "spool directory %s is open to other users (mode %04o); batch files hold "
                "personal data: chmod 700 it", path, mode,
            )


@contextlib.contextmanager
def disk_full_as_error(directory: Path) -> Iterator[None]:
    """Turn "no space left" (or "quota exceeded") while writing the spool into SpoolFullError."""
    try:
        yield
    except OSError as exc:
        if exc.errno in _FULL:
            raise SpoolFullError(
                f"the spool directory {directory} is full ({os.strerror(exc.errno or 0)}): "
                "free space there, or point --spool-dir (the job's [engine] spool_dir) at a "
                "disk with room, then run again; nothing is lost: rows being claimed were "
                "given back and batches already in flight are taken up where they stopped"
            ) from None
        raise


def open_private(path: Path) -> BinaryIO:
    """Open ``path`` for writing (truncated), mode 0600 whatever the umask; make its dir.

    The file is locked (flock) while open, so a sweep of the spool never takes a file that is
    being written.
    """
    path = Path(path)
    ensure_private_dir(path.parent)
    with disk_full_as_error(path.parent):
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, FILE_MODE)
        try:
            os.fchmod(fd, FILE_MODE)  # an existing file keeps its mode through O_CREAT
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            pass  # a sweep is looking at it this instant; it will see the lock next time
        except BaseException:
            os.close(fd)
            raise
        return _PrivateWriter(io.FileIO(fd, "wb"), path.parent)


class _PrivateWriter(io.BufferedWriter):
    """A buffered spool file whose last flush, at close, also reports a full disk clearly."""

    def __init__(self, raw: io.FileIO, directory: Path) -> None:
        super().__init__(raw)
        self._directory = directory

    def close(self) -> None:
        """Flush and close; "no space left" becomes SpoolFullError (the fd is closed anyway)."""
        with disk_full_as_error(self._directory):
            super().close()


def write_all(out: BinaryIO, lines: Iterable[bytes], directory: Path) -> None:
    """Write and flush lines, so a full disk shows here and not later at close."""
    with disk_full_as_error(directory):
        out.writelines(lines)
        out.flush()


def try_lock(path: Path) -> int | None:
    """Return an fd holding an exclusive lock on ``path``; None when a writer holds it."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


def spool_file_batch(job: str, name: str) -> str | None:
    """Return the batch id a spool file name belongs to, for this job; None if not one."""
    match = re.fullmatch(re.escape(job) + _BATCH_FILE, name)
    return match.group(1) if match else None


def batch_files(spool_dir: Path, job: str, batch_id: str) -> list[Path]:
    """Every file a batch may have in the spool, whole or partly written."""
    found = []
    for suffix in SUFFIXES:
        base = spool_dir / f"{job}-{batch_id}.{suffix}.jsonl"
        found += [base, base.with_name(base.name + ".part"), base.with_suffix(".tmp")]
    return found
