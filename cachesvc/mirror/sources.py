"""Where a fill's bytes come from: a chain of sources tried in order, resumable mid-body.

Fallback order (issue 13): the owner, the next members in rank (``Cluster.peers_for``),
then upstream. A ``SourceChain`` is a fill's ``BodyOpener``: the fill consumes one
``BlobBody`` whatever its source, hashes it as it streams and applies its release rule, so
bytes from a peer are trusted no more than bytes from upstream.

- A source that fails before its headers (refused, unreachable, 404 from a peer) costs
  nothing: the next one is asked.
- A source that dies mid-transfer costs a retry, not a failed fill: the chain asks the next
  source for the rest (``Range: bytes=<received>-``) and goes on yielding. The fill's hash
  state and its followers never notice (they see no error, only a pause).
- A source that stalls without closing (no bytes for ``timeouts.stall``) counts as one that
  died: the chain times each source out itself (the fill leaves stalls to it) and resumes
  from the next source; only the last source's stall fails the fill, as an upstream's would.
- A digest mismatch is found by the fill at the end; :meth:`SourceChain.settle` then blocks
  every peer that supplied bytes of it (``cluster.block_for``), so the next attempt (the
  client's retry) is served from the next source. The wrong bytes were never released whole.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Sequence
from contextlib import AbstractAsyncContextManager, AsyncExitStack, asynccontextmanager
from typing import Protocol

from cachesvc.cluster.node import Cluster
from cachesvc.cluster.peerclient import PeerFailed
from cachesvc.cluster.ranking import BlobKey
from cachesvc.config.peeraddress import PeerAddress
from cachesvc.errors import (
    DigestMismatch,
    RegistryError,
    UpstreamError,
    UpstreamTimeout,
    UpstreamUnreachable,
)
from cachesvc.metrics import Metrics
from cachesvc.oci import Digest
from cachesvc.upstream.body import BlobBody
from cachesvc.upstream.client import Upstream

__all__ = ["PeerSource", "Source", "SourceChain", "UpstreamSource", "size_from_peers"]

log = logging.getLogger("cachesvc.sources")

_CUT = (UpstreamUnreachable, UpstreamTimeout)  # a transfer that died: resumable


class Source(Protocol):
    """One place a blob can be read from, from any offset."""

    label: str
    peer: PeerAddress | None  # the member that sent the bytes (None: upstream)

    def open(self, offset: int) -> AbstractAsyncContextManager[BlobBody]:
        """The blob from ``offset``; ``size`` is then the bytes from there."""
        ...


class UpstreamSource:
    """The registry itself (always the last source)."""

    peer: PeerAddress | None = None

    def __init__(self, upstream: Upstream, repository: str, digest: Digest) -> None:
        self.label = "upstream"
        self._upstream, self._repository, self._digest = upstream, repository, digest

    def open(self, offset: int) -> AbstractAsyncContextManager[BlobBody]:
        return self._upstream.blob(self._repository, self._digest, offset)


class PeerSource:
    """A cluster member's peer API (it may redirect to another member: ``peer`` is who sent)."""

    def __init__(
        self, cluster: Cluster, peer: PeerAddress, registry: str, repository: str, digest: Digest
    ) -> None:
        self.label = f"peer {peer}"
        self.peer: PeerAddress | None = peer
        self._cluster, self._asked = cluster, peer
        self._registry, self._repository, self._digest = registry, repository, digest

    @asynccontextmanager
    async def open(self, offset: int) -> AsyncIterator[BlobBody]:
        client = self._cluster.client
        try:
            async with client.blob(
                self._asked, self._registry, self._repository, self._digest, offset
            ) as answer:
                self.peer = answer.served_by
                self._cluster.health.mark_ok(answer.served_by)
                yield answer.body
        except PeerFailed as exc:
            self._cluster.failed(exc)
            raise


async def size_from_peers(
    cluster: Cluster, registry: str, repository: str, digest: Digest
) -> tuple[int, str] | None:
    """A blob HEAD asked of the blob's owner (then the next in rank): (size, ``peer X``).

    None when no peer answered 200 with a size (this daemon owns it, or every peer failed):
    the caller asks upstream then. So a rollout's HEADs cost upstream one per blob, at the
    owner, instead of one per node. Nothing from a peer is trusted here either: a size is
    only a HEAD's answer, and the GET that follows is hashed as always.
    """
    for peer in cluster.peers_for(BlobKey(str(digest))):
        try:
            size = await cluster.client.blob_size(peer, registry, repository, digest)
        except PeerFailed as exc:
            cluster.failed(exc)
            log.info("blob HEAD from %s failed: %s", peer, exc.message)
            continue
        except RegistryError as exc:  # a timeout: the next peer, then upstream
            log.info("blob HEAD from %s failed: %s", peer, exc.message)
            continue
        cluster.health.mark_ok(peer)
        cluster.metrics.upstream_avoided.inc()
        return size, f"peer {peer}"
    return None


class SourceChain:
    """A fill's sources in fallback order; ``open`` is the fill's ``BodyOpener``."""

    def __init__(
        self,
        sources: Sequence[Source],
        registry: str,
        metrics: Metrics,
        cluster: Cluster | None = None,
    ) -> None:
        if not sources:
            raise ValueError("a chain needs at least one source")
        self._sources = tuple(sources)
        self._registry = registry
        self._metrics = metrics
        self._cluster = cluster
        self._stall = cluster.timeouts.stall if cluster is not None else None
        self._stack = AsyncExitStack()
        self.supplied: list[Source] = []  # sources that sent bytes, in order
        self.resumes = 0

    @property
    def peer_sourced(self) -> bool:
        """Whether the chain asks a peer before upstream (a fill that waits on a peer)."""
        return self._sources[0].peer is not None

    @asynccontextmanager
    async def open(self) -> AsyncIterator[BlobBody]:
        """The first source that answers, resuming from the next ones if it dies."""
        try:
            body, index = await self._open_from(0, 0)
            chunks = self._chunks(body, index, body.size)
            guarded = self._stall is not None  # else the fill times stalls out itself
            yield BlobBody(body.size, chunks, body.endpoint, counted=True, guards_stall=guarded)
        finally:
            await self._stack.aclose()

    async def _open_from(self, first: int, offset: int) -> tuple[BlobBody, int]:
        last: RegistryError | None = None
        for index in range(first, len(self._sources)):
            source = self._sources[index]
            stack = AsyncExitStack()
            try:
                body = await stack.enter_async_context(source.open(offset))
            except RegistryError as exc:
                await stack.aclose()
                if source.peer is None:  # upstream: its answer is the answer
                    raise
                log.info("%s failed for a blob, trying the next source: %s", source.label, exc)
                last = exc
                continue
            self._stack = stack
            self.supplied.append(source)
            return body, index
        assert last is not None
        raise last

    async def _chunks(self, body: BlobBody, index: int, size: int | None) -> AsyncIterator[bytes]:
        received = 0
        while True:
            source = self._sources[index]
            try:
                async for chunk in self._guarded(source, body):
                    received += len(chunk)
                    self._count(source, len(chunk))
                    yield chunk
                return
            except _CUT as exc:
                if index + 1 >= len(self._sources):
                    raise
                log.warning("%s died after %d bytes, resuming: %s", source.label, received, exc)
                if self._cluster is not None and source.peer is not None:
                    self._cluster.health.mark_unreachable(source.peer)
                await self._stack.aclose()
                body, index = await self._open_from(index + 1, received)
                self.resumes += 1
                if size is not None and body.size is not None and body.size != size - received:
                    raise UpstreamError(
                        f"{self._sources[index].label} disagrees on the blob's size"
                    ) from None

    async def _guarded(self, source: Source, body: BlobBody) -> AsyncIterator[bytes]:
        """``body``'s chunks; no bytes for ``stall`` seconds is ``UpstreamTimeout`` (a cut)."""
        chunks = body.chunks.__aiter__()
        while True:
            try:
                async with asyncio.timeout(self._stall):
                    chunk = await anext(chunks, None)
            except TimeoutError:
                raise UpstreamTimeout(
                    f"{source.label} stalled: no bytes for {self._stall:g}s"
                ) from None
            if chunk is None:
                return
            yield chunk

    def _count(self, source: Source, count: int) -> None:
        if source.peer is None:
            self._metrics.upstream_bytes.labels(self._registry).inc(count)
        elif self._cluster is not None:
            self._cluster.metrics.peer_bytes_received.inc(count)

    def settle(self, error: RegistryError | None) -> None:
        """The fill ended: block peers after a mismatch, count an upstream fetch avoided."""
        cluster = self._cluster
        if cluster is None:
            return
        if isinstance(error, DigestMismatch):
            for source in self.supplied:
                if source.peer is not None:
                    log.warning("peer %s sent wrong bytes: blocked", source.peer)
                    cluster.block(source.peer)
        elif error is None and self.supplied and all(s.peer for s in self.supplied):
            cluster.metrics.upstream_avoided.inc()
