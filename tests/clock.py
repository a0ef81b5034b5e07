"""A clock tests advance instead of sleeping (``cachesvc.clock.Clock``)."""

from __future__ import annotations

import time


class AdvancingClock:
    """The real clock plus an offset the test moves forward with ``advance``.

    Every TTL, cool-down and expiry decision of the daemon reads this clock, so
    ``advance(2.1)`` expires a 2 s Retry-After at once. The event loop's own time (I/O
    timeouts, ``asyncio.sleep``) is not shifted: requests in flight behave as they would.
    """

    def __init__(self) -> None:
        self.offset = 0.0

    def monotonic(self) -> float:
        return time.monotonic() + self.offset

    def time(self) -> float:
        return time.time() + self.offset

    def advance(self, seconds: float) -> None:
        """Move both readings ``seconds`` forward (never back: a monotonic clock)."""
        assert seconds >= 0
        self.offset += seconds
