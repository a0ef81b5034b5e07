"""Manifests from the cluster: a tag lookup or a manifest by digest asked of its owner.

A tag (registry, repository, tag, Accept set) has an owner like a blob, so a rollout makes
one upstream tag lookup per ``tag_ttl`` for the whole cluster: non-owners ask the owner,
which answers from its own tag cache or looks the tag up once. What comes back is checked
as an upstream answer is (``Manifests`` hashes the body against ``Docker-Content-Digest``);
a manifest by digest that does not hash to its digest blocks that peer. Any failure just
means the next peer in rank, then upstream: asking peers can cost time, never an answer.
"""

from __future__ import annotations

import logging

from cachesvc.cluster.node import Cluster
from cachesvc.cluster.peerclient import PeerFailed
from cachesvc.cluster.ranking import BlobKey, TagKey
from cachesvc.config.peeraddress import PeerAddress
from cachesvc.errors import UpstreamError
from cachesvc.mirror.routing import Target
from cachesvc.oci import ACCEPT_ANY_MANIFEST, Digest
from cachesvc.upstream.client import Answer

__all__ = ["PeerManifests"]

log = logging.getLogger("cachesvc.sources")


class PeerManifests:
    """Asks the owner (then the next in rank) for manifests."""

    def __init__(self, cluster: Cluster) -> None:
        self._cluster = cluster

    def for_tag(self, target: Target, tag: str, accept: tuple[str, ...]) -> tuple[PeerAddress, ...]:
        """The peers to ask for a tag (empty: ask upstream, this daemon owns it)."""
        key = TagKey(target.registry, target.repository, tag, frozenset(accept))
        return self._cluster.peers_for(key)

    def for_digest(self, digest: Digest) -> tuple[PeerAddress, ...]:
        """The peers to ask for a manifest by digest (its owner is the digest's)."""
        return self._cluster.peers_for(BlobKey(str(digest)))

    async def tag(
        self, peers: tuple[PeerAddress, ...], target: Target, tag: str, accept: tuple[str, ...]
    ) -> Answer | None:
        """The owner's answer for a tag, or None when no peer answered."""
        return await self._first(peers, target, tag, ", ".join(accept), None)

    async def digest(
        self, peers: tuple[PeerAddress, ...], target: Target, digest: Digest
    ) -> Answer | None:
        """A manifest by digest whose bytes match it, or None."""
        return await self._first(peers, target, str(digest), ACCEPT_ANY_MANIFEST, digest)

    async def _first(
        self,
        peers: tuple[PeerAddress, ...],
        target: Target,
        reference: str,
        accept: str,
        digest: Digest | None,
    ) -> Answer | None:
        cluster = self._cluster
        for peer in peers:
            try:
                answer = await cluster.client.manifest(
                    peer, target.registry, target.repository, reference, accept
                )
            except PeerFailed as exc:
                cluster.failed(exc)
                log.info("manifest %s from %s failed: %s", reference, peer, exc.message)
                continue
            except UpstreamError as exc:
                log.info("manifest %s from %s failed: %s", reference, peer, exc.message)
                continue
            cluster.health.mark_ok(peer)
            if digest is not None and Digest.of(answer.body, digest.algorithm) != digest:
                log.warning("peer %s sent a manifest that is not %s: blocked", peer, digest)
                cluster.block(peer)
                continue
            cluster.metrics.upstream_avoided.inc()
            return answer
        return None
