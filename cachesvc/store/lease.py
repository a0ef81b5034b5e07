"""Leases: which stored blobs are being read right now, so eviction leaves them alone.

A lease is taken on the event loop the moment a request decides to serve a stored
file, and released when its response has been sent (or abandoned). Eviction checks
``in_use`` and unlinks on the same loop, so between "decided to serve" and "file
opened" nothing can remove the file. (Once a reader holds an open descriptor,
unlinking would not hurt it on POSIX; the lease covers the gap before ``open``.)
"""

from __future__ import annotations

from collections import Counter

from cachesvc.oci import Digest


class Lease:
    """One reader of one blob; ``release`` is idempotent."""

    __slots__ = ("_digest", "_leases", "released")

    def __init__(self, leases: Leases, digest: Digest) -> None:
        self._leases = leases
        self._digest = digest
        self.released = False

    def release(self) -> None:
        """Give the blob back (safe to call more than once)."""
        if not self.released:
            self.released = True
            self._leases._drop(self._digest)


class Leases:
    """Counts of open readers per digest."""

    def __init__(self) -> None:
        self._held: Counter[str] = Counter()

    def take(self, digest: Digest) -> Lease:
        """Mark ``digest`` as being read until the lease is released."""
        self._held[str(digest)] += 1
        return Lease(self, digest)

    def in_use(self, digest: Digest) -> bool:
        """True while any reader holds a lease on ``digest``."""
        return self._held.get(str(digest), 0) > 0

    def __len__(self) -> int:
        return sum(self._held.values())

    def _drop(self, digest: Digest) -> None:
        key = str(digest)
        self._held[key] -= 1
        if self._held[key] <= 0:
            del self._held[key]
