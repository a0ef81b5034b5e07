"""The clock seam: what every TTL, cool-down and expiry decision reads the time from.

Two readings, because the decisions need two kinds of time: ``monotonic()`` for
intervals that live only in this process (endpoint cool-downs, the limiter's bucket
and queue deadlines, token lifetimes, remembered 404s), ``time()`` for instants that
are stored or compared with another host's clock (a tag's ``checked_at`` in the index,
an HTTP-date ``Retry-After``). The composition root (``app/``) hands one clock to
every part; tests hand in one they can advance instead of sleeping.
"""

from __future__ import annotations

import time
from typing import Protocol


class Clock(Protocol):
    """A source of the current time."""

    def monotonic(self) -> float:
        """Seconds on a clock that never goes back (only differences mean anything)."""
        ...

    def time(self) -> float:
        """Seconds since the Unix epoch (wall time: stored, or compared across hosts)."""
        ...


class SystemClock:
    """The real clock: ``time.monotonic`` and ``time.time``."""

    def monotonic(self) -> float:
        """``time.monotonic()``."""
        return time.monotonic()

    def time(self) -> float:
        """``time.time()``."""
        return time.time()


SYSTEM_CLOCK: Clock = SystemClock()
