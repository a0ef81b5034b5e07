"""Rendezvous (highest random weight) hashing: a key's owner and fallback order.

Every member gets a weight per key, ``blake2b(key, member)``; the ranking is the members by
descending weight, the first is the owner. Every node computes the same order from the same
member set with no coordination, and a change of membership moves only what it must: removing
a member leaves the relative order of all others unchanged for every key (so only the keys it
owned get a new owner, their old second), adding one changes a key's owner only when the new
member wins it.

The hash and the key encoding are part of the cluster protocol: nodes that hash differently
(a rolling upgrade that changed them) disagree on owners. That costs efficiency, not
correctness, because a request from a peer is never forwarded. Change them only with a note.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass

from cachesvc.config.peeraddress import PeerAddress

__all__ = ["BlobKey", "RankKey", "TagKey", "owner", "ranking"]


@dataclass(frozen=True, slots=True)
class BlobKey:
    """Content by digest (``sha256:...``): a blob, or a manifest fetched by digest."""

    digest: str

    def encode(self) -> bytes:
        """The bytes hashed for this key (``blob`` domain, so no tag key collides)."""
        return b"blob\0" + self.digest.encode()


@dataclass(frozen=True, slots=True)
class TagKey:
    """A tag lookup: one owner per (registry, repository, tag, Accept set) for the cluster.

    ``accept`` is the set of manifest media types the client accepts; it is part of the key
    because a registry may answer a tag with a different manifest per Accept set. Case and
    order do not matter (normalized by :meth:`encode`).
    """

    registry: str
    repository: str
    tag: str
    accept: frozenset[str]

    def encode(self) -> bytes:
        """The bytes hashed for this key: NUL-separated fields, media types sorted."""
        media_types = ",".join(sorted({m.strip().lower() for m in self.accept}))
        fields = ("tag", self.registry.lower(), self.repository, self.tag, media_types)
        return "\0".join(fields).encode()


RankKey = BlobKey | TagKey
"""Anything that has an owner in the cluster."""


def _weight(key: bytes, member: PeerAddress) -> int:
    digest = hashlib.blake2b(key + b"\0" + str(member).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def ranking(key: RankKey, members: Iterable[PeerAddress]) -> tuple[PeerAddress, ...]:
    """All distinct ``members``, owner first, then the order to fall back in.

    Ties of the 64-bit weight (vanishingly rare) are broken by the address text, so the
    order never depends on the order of ``members``.
    """
    encoded = key.encode()
    distinct = set(members)
    return tuple(sorted(distinct, key=lambda m: (-_weight(encoded, m), str(m))))


def owner(key: RankKey, members: Iterable[PeerAddress]) -> PeerAddress:
    """The first of :func:`ranking` without sorting; ``ValueError`` when there are no members."""
    encoded = key.encode()
    best = min(set(members), key=lambda m: (-_weight(encoded, m), str(m)), default=None)
    if best is None:
        raise ValueError("a ranking needs at least one member")
    return best
