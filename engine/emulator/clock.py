"""The emulator's clock: real time sped up by ``time_scale``, and moved on by tests at will.

Everything the API shows as a time (``created_at``, ``expires_at``, the ``*_at`` stamps) and
everything that depends on the API's own durations (the completion window, file expiry, how long
a batch stays ``cancelling``) reads this clock, so a 24 h window or a 30-day file expiry can be
run in seconds: by a ``time_scale`` (3600.0: an emulated hour per real second), or by
``advance(seconds)`` from a test that wants to jump, without waiting at all.
"""

from __future__ import annotations

import time

__all__ = ["Clock"]


class Clock:
    """Emulated wall and monotonic time, ``scale`` times faster than real time plus jumps."""

    def __init__(self, scale: float = 1.0) -> None:
        self.scale = scale
        self._wall0 = time.time()
        self._mono0 = time.monotonic()
        self._offset = 0.0

    def mono(self) -> float:
        """Emulated seconds since the clock started (never goes back)."""
        return (time.monotonic() - self._mono0) * self.scale + self._offset

    def now(self) -> float:
        """Emulated Unix time (what ``*_at`` fields show)."""
        return self._wall0 + self.mono()

    def real_delay(self, emulated_s: float) -> float:
        """Real seconds until ``emulated_s`` emulated seconds have passed (0 when past)."""
        return max(0.0, emulated_s / self.scale)

    def advance(self, seconds: float) -> None:
        """Move the clock forward by ``seconds`` emulated seconds, at once."""
        if seconds < 0:
            raise ValueError(f"the clock only moves forward, not by {seconds!r}")
        self._offset += seconds
