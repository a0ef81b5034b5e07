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
- A digest mismatch is found by the fill at the end; :meth:`SourceChain.settle` then blocks
  every peer that supplied bytes of it (``cluster.block_for``), so the next attempt (the
  client's retry) is served from the next source. The wrong bytes were never released whole.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Sequence
from contextlib import AbstractAsyncContextManager, AsyncExitStack, asynccontextmanager
from typing import Protocol

from cachesvc.cluster.node import Cluster
from cachesvc.cluster.peerclient import PeerFailed
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

__all__ = ["PeerSource", "Source", "SourceChain", "UpstreamSource"]

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
            yield BlobBody(body.size, chunks, body.endpoint, counted=True)
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
                async for chunk in body.chunks:
                    received += len(chunk)
                    self._count(source, len(chunk))
                    yield chunk
                return
            except _CUT as exc:
                if index + 1 >= len(self._sources):
                    raise
                log.warning("%s died after %d bytes, resuming: %s", source.label, received, exc)
                if isinstance(exc, PeerFailed) and self._cluster is not None:
                    self._cluster.health.mark_unreachable(exc.peer)
                await self._stack.aclose()
                body, index = await self._open_from(index + 1, received)
                self.resumes += 1
                if size is not None and body.size is not None and body.size != size - received:
                    raise UpstreamError(
                        f"{self._sources[index].label} disagrees on the blob's size"
                    ) from None

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
