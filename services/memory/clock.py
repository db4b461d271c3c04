"""`VirtualClock`: time that passes only when a test says so."""

from __future__ import annotations

import time


class VirtualClock:
    """Time that moves only when told to: `now()` in seconds since the epoch."""

    def __init__(self, start_s: float | None = None) -> None:
        self._now = time.time() if start_s is None else start_s

    def now(self) -> float:
        """The current virtual time."""
        return self._now

    def advance(self, seconds: float) -> None:
        """Move time forward (never back)."""
        self._now += max(0.0, seconds)
