"""Which peers to ask, in which order: the ranking minus peers that misbehaved lately.

Two kinds of trouble, both timed on an injected monotonic clock:

- **blocked**: the peer sent bytes that did not match their digest. It is skipped for
  ``block_for`` (``cluster.block_for``, default 5m) whatever else it does meanwhile: wrong
  bytes mean a broken disk or a bad actor, and a retry would cost a whole transfer.
- **unreachable**: connecting to it failed (refused, timed out). It is skipped for
  ``retry_unreachable`` seconds, then tried again; any success makes it ``ok`` at once. This
  keeps a dead node from costing every request a connect timeout until DNS drops it.

:meth:`PeerHealth.sources` turns a key's ranking into the peers this daemon asks, in order.
It stops at this daemon's own place in the ranking: when every peer ranked above it is
skipped, this daemon is the first live member in rank, the key's effective owner, and fills
from upstream itself, which is what the other nodes falling back to it expect.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Literal

from cachesvc.config.peeraddress import PeerAddress

__all__ = ["PeerHealth", "PeerState", "StateName"]

StateName = Literal["ok", "blocked", "unreachable"]
Clock = Callable[[], float]

DEFAULT_RETRY_UNREACHABLE = 5.0


@dataclass(frozen=True, slots=True)
class PeerState:
    """One peer as ``GET /admin/v1/cluster`` shows it."""

    address: PeerAddress
    state: StateName
    seconds_left: float | None = None  # until a blocked/unreachable peer is tried again

    def as_json(self) -> dict[str, object]:
        """``{"address": "host:port", "state": ...}`` plus ``seconds_left`` when not ok."""
        body: dict[str, object] = {"address": str(self.address), "state": self.state}
        if self.seconds_left is not None:
            body["seconds_left"] = round(self.seconds_left, 3)
        return body


class PeerHealth:
    """Blocked and unreachable peers, each until a deadline.

    ``blocks`` counts peers blocked after a mismatch (a metric). Entries of peers that left
    the cluster are dropped by :meth:`retain`; expired entries on first look.
    """

    def __init__(
        self,
        *,
        block_for: float,
        retry_unreachable: float = DEFAULT_RETRY_UNREACHABLE,
        clock: Clock = time.monotonic,
    ) -> None:
        self._block_for = block_for
        self._retry_unreachable = retry_unreachable
        self._clock = clock
        self._blocked_until: dict[PeerAddress, float] = {}
        self._unreachable_until: dict[PeerAddress, float] = {}
        self.blocks = 0

    def block(self, peer: PeerAddress) -> None:
        """``peer`` sent wrong bytes: skip it for ``block_for`` from now."""
        self._blocked_until[peer] = self._clock() + self._block_for
        self.blocks += 1

    def mark_unreachable(self, peer: PeerAddress) -> None:
        """Connecting to ``peer`` failed: skip it for ``retry_unreachable`` from now."""
        self._unreachable_until[peer] = self._clock() + self._retry_unreachable

    def mark_ok(self, peer: PeerAddress) -> None:
        """``peer`` answered: no longer unreachable (a block stays until it expires)."""
        self._unreachable_until.pop(peer, None)

    def state(self, peer: PeerAddress) -> PeerState:
        """``peer``'s state now; blocked wins over unreachable."""
        left = self._left(self._blocked_until, peer)
        if left is not None:
            return PeerState(peer, "blocked", left)
        left = self._left(self._unreachable_until, peer)
        if left is not None:
            return PeerState(peer, "unreachable", left)
        return PeerState(peer, "ok")

    def _left(self, table: dict[PeerAddress, float], peer: PeerAddress) -> float | None:
        """Seconds left of ``peer``'s entry in ``table``; None (and dropped) when expired."""
        until = table.get(peer)
        if until is None:
            return None
        left = until - self._clock()
        if left > 0:
            return left
        del table[peer]
        return None

    def sources(
        self, ranking: Iterable[PeerAddress], self_address: PeerAddress
    ) -> tuple[PeerAddress, ...]:
        """The peers to ask for a key, in rank order: those ranked above this daemon, minus
        blocked and unreachable ones. Empty: this daemon is the key's effective owner."""
        asked: list[PeerAddress] = []
        for member in ranking:
            if member == self_address:
                break
            if self.state(member).state == "ok":
                asked.append(member)
        return tuple(asked)

    def states(self, members: Iterable[PeerAddress], self_address: PeerAddress) -> list[PeerState]:
        """Every member but this daemon, sorted by address, for ``GET /admin/v1/cluster``."""
        return [self.state(m) for m in sorted(set(members)) if m != self_address]

    def retain(self, members: Iterable[PeerAddress]) -> None:
        """Forget peers that are no longer members (call on a membership change)."""
        keep = set(members)
        for table in (self._blocked_until, self._unreachable_until):
            for peer in [p for p in table if p not in keep]:
                del table[peer]
