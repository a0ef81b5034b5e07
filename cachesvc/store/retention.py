"""The one answer to "may this stored blob be removed now?", for eviction and purge.

A blob stays while a pinned image holds it (``Pins.protects``), while a response
reads it (``Leases.in_use``) or while a fill of it runs (it may be committing).
``remove`` checks and unlinks with no ``await`` in between, so called on the event
loop it is atomic against a request taking a lease. Eviction and inventory's purge
both remove through it and differ only in what they report.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Protocol

from cachesvc.oci import Digest
from cachesvc.store.lease import Leases
from cachesvc.store.pins import Pins
from cachesvc.store.store import Store

Outcome = Literal["removed", "pinned", "in_use", "absent"]


class Filling(Protocol):
    """The running fills (``cachesvc.mirror.fills.FillManager``), as removal sees them."""

    def get(self, digest: Digest) -> object | None:
        """The running fill for ``digest``, if any."""
        ...


@dataclass(frozen=True, slots=True)
class Removal:
    """What ``Retention.remove`` did, and how many bytes it freed."""

    outcome: Outcome
    size: int = 0


class Retention:
    """Decides and carries out the removal of stored blobs."""

    def __init__(self, store: Store, pins: Pins, leases: Leases, fills: Filling) -> None:
        self._store = store
        self.pins = pins
        self._leases = leases
        self._fills = fills

    def held(self, digest: Digest) -> Literal["pinned", "in_use"] | None:
        """Why ``digest`` must stay right now, or None when it may go."""
        if self.pins.protects(str(digest)):
            return "pinned"
        if self._leases.in_use(digest) or self._fills.get(digest) is not None:
            return "in_use"
        return None

    def remove(self, digest: Digest) -> Removal:
        """Remove ``digest`` unless it is held (no await: atomic on the loop)."""
        reason = self.held(digest)
        if reason is not None:
            return Removal(reason)
        size = self._store.size(digest) or 0
        if self._store.remove(digest):
            return Removal("removed", size)
        return Removal("absent")
