"""Verdicts remembered per (registry, repository, digest), so a hit costs no crypto.

Per repository, not per digest: cosign keeps the signature beside the image, so the same
digest in another repository is another question. A verified verdict stands until evicted or
until the keys change; a refusal is re-checked after ``negative_ttl`` seconds (a signature
may be pushed after the image). Each entry remembers the key set it was decided with
(:func:`keyring_id`), and a lookup with another key set misses: a removed key stops
verifying at once, and a newly added key gets its chance without waiting for the TTL.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from .keys import PublicKey
from .verdict import Verdict

__all__ = ["VerdictCache", "keyring_id"]

CacheKey = tuple[str, str, str]


def keyring_id(keys: Iterable[PublicKey]) -> str:
    """A fingerprint of a set of keys, independent of their order or file names."""
    return hashlib.sha256("\n".join(sorted(k.hint for k in keys)).encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class _Entry:
    verdict: Verdict
    keyring: str
    decided_at: float


class VerdictCache:
    """At most ``max_entries`` verdicts, least recently used evicted first.

    ``clock`` is a monotonic clock in seconds (injected, so tests control time).
    """

    def __init__(
        self, *, negative_ttl: float, max_entries: int, clock: Callable[[], float]
    ) -> None:
        if max_entries < 1:
            raise ValueError("max_entries must be at least 1")
        self._negative_ttl = negative_ttl
        self._max_entries = max_entries
        self._clock = clock
        self._entries: OrderedDict[CacheKey, _Entry] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, registry: str, repository: str, digest: str, keyring: str) -> Verdict | None:
        """The remembered verdict, or None when there is none still valid for ``keyring``."""
        key = (registry, repository, digest)
        entry = self._entries.get(key)
        if entry is None:
            return None
        stale = not entry.verdict.ok and self._clock() - entry.decided_at >= self._negative_ttl
        if entry.keyring != keyring or stale:
            del self._entries[key]
            return None
        self._entries.move_to_end(key)
        return entry.verdict

    def put(self, registry: str, repository: str, verdict: Verdict, keyring: str) -> None:
        """Remember ``verdict`` (for ``verdict.digest``) as decided now with ``keyring``."""
        key = (registry, repository, verdict.digest)
        self._entries[key] = _Entry(verdict, keyring, self._clock())
        self._entries.move_to_end(key)
        while len(self._entries) > self._max_entries:
            self._entries.popitem(last=False)
