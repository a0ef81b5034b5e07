"""Blobs: served from disk on a hit, from a single-flight fill on a miss.

``get`` is the one place that decides hit or fill, and everything a response needs
before its status line: a cached file and its size, or a fill whose upstream answered
200 (and so has a size, or is chunked). A caller that cannot stream a fill of unknown
size gets the verified file once the fill ended. Upstream 404 or failure surfaces
here as a ``RegistryError``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from types import TracebackType
from typing import Literal

from cachesvc.cluster.node import Cluster
from cachesvc.cluster.origin import from_peer
from cachesvc.cluster.ranking import BlobKey
from cachesvc.errors import BlobUnknown, UpstreamError, UpstreamUnreachable
from cachesvc.metrics import Metrics
from cachesvc.mirror.fill import BodyOpener, Fill
from cachesvc.mirror.fills import FillManager
from cachesvc.mirror.routing import Target
from cachesvc.mirror.sources import (
    PeerSource,
    Source,
    SourceChain,
    UpstreamSource,
    size_from_peers,
)
from cachesvc.oci import Digest
from cachesvc.store.lease import Lease, Leases
from cachesvc.store.store import Store
from cachesvc.store.verification import Damage, check_file
from cachesvc.upstream.client import Upstream

Result = Literal["hit", "miss", "coalesced"]
PEER_JOIN_WAIT = 3.0  # seconds a peer's request waits for our own peer-sourced fill to start


@dataclass(frozen=True, slots=True)
class CachedBlob:
    """A verified blob on disk."""

    path: Path
    size: int
    lease: Lease | None = None  # held until the response is sent; release() when done
    # Set when this process has not verified the file yet: send it through
    # ``checked_spans`` (hashed while sent, the last byte after the digest matched).
    unverified: Digest | None = None

    def release(self) -> None:
        """Give the lease back: eviction may remove the file again (idempotent)."""
        if self.lease is not None:
            self.lease.release()


@dataclass(frozen=True, slots=True)
class FillingBlob:
    """A blob being fetched; stream it with ``fill.stream``."""

    fill: Fill


@dataclass(frozen=True, slots=True)
class BlobAnswer:
    """The source of a blob response and how the cache got it.

    A context manager: ``with (await blobs.get(...)) as answer:`` holds a hit's lease
    for the block and releases it however the block ends (sent, failed, cancelled,
    or never started), so no response object has to remember it.
    """

    source: CachedBlob | FillingBlob
    result: Result
    upstream: str | None = None  # the endpoint of the fill this answer caused or joined

    def __enter__(self) -> BlobAnswer:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if isinstance(self.source, CachedBlob):
            self.source.release()


class Blobs:
    """Blob lookups for the mirror."""

    def __init__(
        self,
        store: Store,
        fills: FillManager,
        upstreams: Mapping[str, Upstream],
        leases: Leases | None = None,
        cluster: tuple[Cluster, Metrics] | None = None,
    ) -> None:
        self._store = store
        self._fills = fills
        self._upstreams = upstreams
        self.leases = leases if leases is not None else Leases()
        self._cluster = cluster  # cluster mode: fills ask peers before upstream
        self._chains: dict[str, SourceChain] = {}  # of running fills in cluster mode
        self._settling: set[asyncio.Task[None]] = set()

    def cached(self, digest: Digest) -> CachedBlob | None:
        """The stored blob, if there is one, leased to the caller (release it when sent)."""
        size = self._store.size(digest)
        if size is None:
            return None
        self._store.touch(digest)
        unverified = None if digest in self._store.verified else digest
        return CachedBlob(self._store.path(digest), size, self.leases.take(digest), unverified)

    def verified(self, digest: Digest) -> None:
        """A stored blob was hashed whole while it was sent, and matched."""
        self._store.verified.add(digest)

    def damaged(self, damage: Damage) -> None:
        """A stored blob is wrong or unreadable: drop it so the next request refetches."""
        self._store.drop_damaged(damage, "serve")

    async def _checked_whole(self, cached: CachedBlob) -> CachedBlob | None:
        """An unverified stored blob hashed whole before it is sent; None if damaged."""
        digest = cached.unverified
        if digest is None:
            return cached
        try:
            damage = await asyncio.to_thread(check_file, cached.path, digest)
        except FileNotFoundError:
            damage = Damage(digest, "mismatch", "the file vanished")
        if damage is None:
            self.verified(digest)
            return replace(cached, unverified=None)
        cached.release()
        self.damaged(damage)
        return None

    async def get(self, target: Target, digest: Digest, *, unsized_ok: bool = True) -> BlobAnswer:
        """A blob to send: cached, joined to a running fill, or a new fill.

        ``unsized_ok=False`` (a Range, or an HTTP/1.0 client: nothing to answer a range
        against, no chunked framing) turns a fill whose size upstream did not say into
        the verified file, once the fill ended. The answer holds a lease when its
        source is a file: use it as a context manager.
        """
        cached = self.cached(digest)
        if cached is not None and not unsized_ok:
            # A range (or an HTTP/1.0 client) cannot be sent under the release rule:
            # an unverified file is checked whole first, and refetched if damaged.
            cached = await self._checked_whole(cached)
        if cached is not None:
            return BlobAnswer(cached, "hit")
        if self._cluster is not None and from_peer():
            await self._join_peer_sourced(digest)
        fill, started = self._fills.start(digest, target.registry, self._opener(target, digest))
        if started and self._cluster is not None:
            self._watch(fill)
        await fill.wait_ready()
        result: Result = "miss" if started else "coalesced"
        if fill.size is not None or unsized_ok:
            return BlobAnswer(FillingBlob(fill), result, fill.endpoint)
        await fill.drain()
        if fill.error is not None:
            raise fill.error  # still before the status line
        cached = self.cached(digest)
        if cached is None:
            raise UpstreamError(f"blob {digest} was evicted right after its fill; retry")
        return BlobAnswer(cached, result, fill.endpoint)

    def _opener(self, target: Target, digest: Digest) -> BodyOpener:
        """Upstream alone, or (cluster mode) the peers in rank, then upstream."""
        upstream = self._upstreams[target.registry]
        if self._cluster is None:
            return lambda: upstream.blob(target.repository, digest)
        cluster, metrics = self._cluster
        sources: list[Source] = [
            PeerSource(cluster, peer, target.registry, target.repository, digest)
            for peer in cluster.peers_for(BlobKey(str(digest)))
        ]
        sources.append(UpstreamSource(upstream, target.repository, digest))
        chain = SourceChain(sources, target.registry, metrics, cluster)
        if self._fills.get(digest) is None:
            self._chains[str(digest)] = chain
        return chain.open

    async def _join_peer_sourced(self, digest: Digest) -> None:
        """A peer asks for a blob our own fill is asking a peer for: wait (a little) for it.

        Normally that fill answers within moments (a fan-out redirect sent the asker here
        because this daemon streams the blob from the owner). But if member lists disagree,
        two daemons' fills could each wait on the other: after ``PEER_JOIN_WAIT`` the asker
        gets an error and moves on to its next source, so no request ever loops.
        """
        chain = self._chains.get(str(digest))
        fill = self._fills.get(digest)
        if chain is None or fill is None or not chain.peer_sourced or fill.ready.done():
            return
        await asyncio.wait((fill.ready,), timeout=PEER_JOIN_WAIT)
        if not fill.ready.done():
            raise UpstreamUnreachable(f"blob {digest} is still being asked of a peer here")

    def _watch(self, fill: Fill) -> None:
        """When a cluster fill ends, settle its chain (block peers that sent wrong bytes)."""
        chain = self._chains.get(str(fill.digest))

        async def settle() -> None:
            await fill.drain()
            if self._chains.get(str(fill.digest)) is chain:
                del self._chains[str(fill.digest)]
            if chain is not None:
                chain.settle(fill.error)

        task = asyncio.get_running_loop().create_task(settle())
        self._settling.add(task)
        task.add_done_callback(self._settling.discard)

    async def stat(self, target: Target, digest: Digest) -> tuple[int, Result, str | None]:
        """A blob's size for HEAD (and the upstream endpoint asked, if any); never downloads."""
        size = self._store.size(digest)
        if size is not None:
            self._store.touch(digest)
            return size, "hit", None
        fill = self._fills.get(digest)
        if fill is not None and fill.ready.done() and fill.size is not None and not fill.finished:
            return fill.size, "coalesced", fill.endpoint
        if self._cluster is not None:  # the owner answers (from_peer: no peers are asked)
            found = await size_from_peers(
                self._cluster[0], target.registry, target.repository, digest
            )
            if found is not None:
                return found[0], "miss", found[1]
        answer = await self._upstreams[target.registry].fetch(
            "HEAD",
            f"/v2/{target.repository}/blobs/{digest}",
            scope=f"repository:{target.repository}:pull",
        )
        if answer.status == 404:
            raise BlobUnknown(f"blob {digest} not found in {target.registry}/{target.repository}")
        length = answer.headers.get("Content-Length", "")
        if answer.status != 200 or not length.isdigit():
            raise UpstreamError(
                f"{target.registry} answered a blob HEAD with {answer.status} and no size"
            )
        return int(length), "miss", answer.endpoint
