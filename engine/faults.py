"""Test-only crash points: the engine dies at a named step, as if the machine lost power.

Off unless ``ENGINE_CRASH_AT`` names a point (the reliability tests set it on a subprocess,
which then kills itself with SIGKILL; ``ENGINE_CRASH_AFTER=N`` makes it the N-th time the point
is reached, default the first) or a test arms one in-process with ``arm()``, which raises
SimulatedCrash, a BaseException that no engine code catches or cleans up after.

``ENGINE_STOP_AT`` names a point where the process stalls instead of dying: it stops itself
with SIGSTOP the first time the point is reached, and goes on from there when a test sends
SIGCONT (a worker frozen by a long GC pause, a swapped-out VM, a laptop lid).
"""

from __future__ import annotations

import os
import signal

__all__ = ["CRASH_POINTS", "SimulatedCrash", "arm", "crash_point", "disarm"]

CRASH_POINTS = (
    "after_claim",  # rows claimed, nothing bound to a batch yet
    "after_spool",  # draft bound in the database, nothing sent
    "after_upload",  # input file uploaded, its id saved, no batch created
    "after_create",  # remote batch created, its id NOT saved yet
    "mid_poll",  # batch live and recorded, while polling
    "after_download",  # batch finished, output downloaded, nothing applied
    "mid_apply",  # the first chunk of results applied, the rest not
)

_armed: dict[str, int] = {}
_reached: dict[str, int] = {}  # times each point was reached, for ENGINE_CRASH_AFTER


class SimulatedCrash(BaseException):
    """Raised at an armed crash point; deliberately not an Exception so nothing handles it."""


def arm(point: str, *, after: int = 1) -> None:
    """Crash in-process the ``after``-th time ``point`` is reached."""
    if point not in CRASH_POINTS:
        raise ValueError(f"unknown crash point {point!r}; known: {', '.join(CRASH_POINTS)}")
    _armed[point] = after


def disarm() -> None:
    """Remove every in-process crash point."""
    _armed.clear()


def crash_point(point: str) -> None:
    """Die here when this point is armed (in-process) or named by ENGINE_CRASH_AT."""
    if _armed:
        left = _armed.get(point)
        if left is not None:
            if left <= 1:
                del _armed[point]
                raise SimulatedCrash(point)
            _armed[point] = left - 1
    target = os.environ.get("ENGINE_CRASH_AT")
    if target and target == point:
        _reached[point] = _reached.get(point, 0) + 1
        if _reached[point] >= _crash_after():
            os.kill(os.getpid(), signal.SIGKILL)
    _stop_point(point)


_stopped: set[str] = set()  # ENGINE_STOP_AT points this process already stopped at


def _stop_point(point: str) -> None:
    """Stop this process (SIGSTOP) the first time it reaches the point ENGINE_STOP_AT names."""
    if os.environ.get("ENGINE_STOP_AT") == point and point not in _stopped:
        _stopped.add(point)
        os.kill(os.getpid(), signal.SIGSTOP)


def _crash_after() -> int:
    """Return ENGINE_CRASH_AFTER (the n-th time a point is reached), 1 when unset or invalid."""
    try:
        return max(1, int(os.environ.get("ENGINE_CRASH_AFTER", "1")))
    except ValueError:
        return 1
