"""Upstream 404s remembered for a registry's ``negative_ttl`` (bounded: clients pick the keys).

A client that asks for 2,000 unknown digests must not cost 2,000 upstream requests each
time: the first 404 for a blob or a manifest by digest is remembered, per registry and
path, and answered from here until it expires. Entries are bounded; the oldest go first.
"""

from __future__ import annotations

from collections import OrderedDict

from cachesvc.clock import SYSTEM_CLOCK, Clock

# 404s remembered per registry; beyond this many the oldest are forgotten.
ENTRIES = 10_000


class Missing:
    """Keys upstream said 404 for, until ``ttl`` seconds later."""

    def __init__(self, ttl: float, clock: Clock = SYSTEM_CLOCK, entries: int = ENTRIES) -> None:
        self._ttl = ttl
        self._clock = clock
        self._entries = entries
        self._until: OrderedDict[str, float] = OrderedDict()

    def remember(self, key: str) -> None:
        """Upstream answered 404 for ``key`` just now."""
        if self._ttl <= 0:
            return
        self._until.pop(key, None)
        self._until[key] = self._clock.monotonic() + self._ttl
        while len(self._until) > self._entries:
            self._until.popitem(last=False)

    def known(self, key: str) -> bool:
        """True while a 404 for ``key`` is remembered (an expired one is dropped)."""
        until = self._until.get(key)
        if until is None:
            return False
        if until <= self._clock.monotonic():
            del self._until[key]
            return False
        return True
