"""The manifests held in memory for fast hits, and the answer a manifest lookup gives.

Manifests are small (a few KiB) and hot: a hit by digest is answered from a byte-bounded
LRU whose GET and HEAD answers are built once, when the manifest is put, so a hit
allocates nothing. The store keeps every manifest on disk; this is only the hot set.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, replace
from typing import Literal

from cachesvc.oci import Digest
from cachesvc.store.store import ManifestRecord

__all__ = ["MEMORY_BUDGET", "BodyCache", "Held", "ManifestAnswer", "Result"]

Result = Literal["hit", "miss", "coalesced", "stale"]
# Bodies kept in memory for fast hits; manifests are small (a few KiB) and hot.
MEMORY_BUDGET = 64 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class ManifestAnswer:
    """What the handler sends: the record, the body (None for HEAD) and how we got it."""

    record: ManifestRecord
    body: bytes | None
    result: Result
    stale_age: float | None = None  # seconds since upstream last confirmed a stale tag
    upstream: str | None = None  # the upstream endpoint asked for this answer, if any
    # The policy already decided this manifest in this request: the fill vetted it before
    # storing it (``_put``), so the facade does not decide (and count) it a second time.
    vetted: bool = False


@dataclass(frozen=True, slots=True)
class Held:
    """A verified manifest held in memory, with its hit answers built once."""

    record: ManifestRecord
    body: bytes
    get: ManifestAnswer
    head: ManifestAnswer


class BodyCache:
    """A small LRU of manifest bodies bounded by total bytes, keyed by digest text."""

    def __init__(self, budget: int) -> None:
        self._budget = budget
        self._used = 0
        self._items: OrderedDict[str, Held] = OrderedDict()

    def get(self, key: str) -> Held | None:
        """The manifest whose digest is ``key`` (``str(digest)``), or None."""
        item = self._items.get(key)
        if item is not None:
            self._items.move_to_end(key)
        return item

    def put(self, record: ManifestRecord, body: bytes) -> None:
        key = str(record.digest)
        if key in self._items or len(body) > self._budget // 4:
            return
        hit = ManifestAnswer(record, body, "hit")
        self._items[key] = Held(record, body, hit, replace(hit, body=None))
        self._used += len(body)
        while self._used > self._budget:
            _, old = self._items.popitem(last=False)
            self._used -= len(old.body)

    def drop(self, digest: Digest) -> None:
        item = self._items.pop(str(digest), None)
        if item is not None:
            self._used -= len(item.body)
