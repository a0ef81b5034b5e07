"""Single-flight blob fills: one upstream fetch per digest, however many clients ask.

A ``Fill`` is a task of its own and owns its whole run. It opens upstream, keeps the
newest bytes in memory for its followers, writes the body into the store through one
``Ingest`` (hashed and written in worker threads, see ``cachesvc.store.ingest``), and
only after the digest matched does it release the last bytes, then commit (fsync,
rename). Clients never own the fill: they *follow* it (``Fill.read``), taking bytes
from memory while they keep up and from the temp file when they fall behind (or join
late), so one that disconnects leaves the fill running. ``cachesvc.mirror.fills``
is only the registry: at most one fill per digest, and the memory budget shared out.

Release rule (the heart of "nothing unverified is served as complete"): while a fill
runs, followers may send ``released`` bytes, which is at most ``size - 1`` when the
size is known and lags the newest chunk when it is not. The final bytes are released
only after verification; on any failure followers get ``FillFailed`` and their
connections are aborted, so no client ever holds a complete, wrong body.

Why this module is a little over 400 lines: every line that moves ``released`` lives
here, in the one class, so the release rule can be read (and property-tested, see
tests/test_fill.py) in one place; splitting the readers from the writer would spread it.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import logging
import os
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from pathlib import Path

from cachesvc.errors import (
    CachesvcError,
    DigestMismatch,
    RegistryError,
    StorageUnavailable,
    UpstreamError,
    UpstreamTimeout,
)
from cachesvc.metrics import Metrics
from cachesvc.oci import Digest
from cachesvc.store.chunks import read_chunks
from cachesvc.store.ingest import Ingest
from cachesvc.store.store import Store
from cachesvc.upstream.body import BlobBody

log = logging.getLogger("cachesvc.fill")

MEMORY_BYTES = 4 * 1024 * 1024  # newest bytes a fill keeps in memory for its followers
MEMORY_TOTAL = 32 * 1024 * 1024  # shared by all fills: many at once keep less each
READ_CHUNK = 512 * 1024  # bytes a follower reads from the temp file at once
FOLLOW_SPAN = 1024 * 1024  # bytes a follower waits for before sending (unless the end)


BodyOpener = Callable[[], AbstractAsyncContextManager[BlobBody]]


@dataclass(frozen=True, slots=True)
class Pacing:
    """How a fill batches its followers' work (tests use small values to see every path).

    Followers wait for ``follow_span`` released bytes at a time and are woken every
    ``follow_span // 2``: waking them per chunk (16 followers, 256 KiB chunks) would
    cost more loop time than the sends themselves.
    """

    follow_span: int = FOLLOW_SPAN
    memory_bytes: int = MEMORY_BYTES  # newest bytes kept in memory (at most)
    memory_total: int = MEMORY_TOTAL  # shared by every running fill


DEFAULT_PACING = Pacing()


class FillFailed(CachesvcError):
    """Raised into followers when the fill they stream from failed after headers."""

    def __init__(self, cause: RegistryError) -> None:
        super().__init__(str(cause))
        self.cause = cause


@dataclass(frozen=True, slots=True)
class FileSpan:
    """Released bytes that left memory: ``count`` bytes of file ``fd`` from ``offset``.

    Send it with ``sendfile`` or ``read`` it; the descriptor lives as long as the
    ``Fill.read`` block that yielded it.
    """

    fd: int
    offset: int
    count: int

    async def read(self, limit: int = READ_CHUNK) -> AsyncIterator[bytes]:
        """The span's bytes, ``limit`` at a time, read off the event loop; a temp file that
        cannot give them (short, or a read error) is ``FillFailed`` for this follower."""
        try:
            async for data in read_chunks(self.fd, self.offset, self.count, limit):
                yield data
        except OSError as exc:
            raise FillFailed(UpstreamError(f"reading the temp file failed: {exc}")) from exc


Piece = memoryview | FileSpan


class Fill:
    """One fetch of one blob into the store; see the module docstring for the rules."""

    def __init__(
        self,
        digest: Digest,
        registry: str,
        opener: BodyOpener,
        store: Store,
        metrics: Metrics,
        *,
        stall_timeout: float,
        pacing: Pacing = DEFAULT_PACING,
        on_end: Callable[[Fill], None] | None = None,
    ) -> None:
        self.digest = digest
        self.registry = registry
        self.size: int | None = None
        self.received = 0  # bytes read from upstream
        self.written = 0  # bytes in the temp file (readable with pread/sendfile)
        self.released = 0  # bytes followers may send (the release rule)
        self.final: Path | None = None
        self.verified = False  # every byte is written and the digest matched
        self.error: RegistryError | None = None
        self.followers = 0
        self.peak_followers = 0
        self.endpoint: str | None = None
        self.started = time.monotonic()
        self.window = pacing.memory_bytes  # written bytes kept in memory (the registry shares)
        loop = asyncio.get_running_loop()
        self.ready: asyncio.Future[None] = loop.create_future()
        self.task: asyncio.Task[None] | None = None
        self._opener = opener
        self._store = store
        self._metrics = metrics
        self._stall = stall_timeout
        self._pacing = pacing
        self._on_end = on_end
        self._ingest: Ingest | None = None
        self._changed: asyncio.Future[None] = loop.create_future()
        self._notified = 0  # ``released`` when followers were last woken
        # The newest bytes as received, for followers that keep up: chunk i starts at
        # _offsets[i]; entries before _head are dropped (compacted now and then).
        self._offsets: list[int] = []
        self._chunks: list[bytes] = []
        self._head = 0
        self._in_memory = 0  # bytes in _chunks[_head:]

    # -- what followers see ------------------------------------------------------------

    @property
    def finished(self) -> bool:
        """True once the fill committed or failed."""
        return self.final is not None or self.error is not None

    def start(self) -> None:
        """Run the fill as a task of its own (once)."""
        if self.task is None:
            self.task = asyncio.get_running_loop().create_task(
                self._run(), name=f"fill {self.digest}"
            )

    async def wait_ready(self) -> None:
        """Wait for upstream's response headers; raises the error if the fill failed first."""
        await asyncio.wait((self.ready,))
        error = self.ready.exception()
        if error is not None:
            raise error

    async def drain(self) -> None:
        """Wait for the fill to end, whatever its outcome (then see ``error``)."""
        if self.task is not None:
            with contextlib.suppress(BaseException):
                await asyncio.shield(self.task)

    async def progress(self) -> AsyncIterator[int]:
        """``received`` now and at every wake-up of the followers, until the fill ends."""
        while not self.finished:
            yield self.received
            await asyncio.wait((self._changed,))

    @contextlib.asynccontextmanager
    async def read(self, start: int, end: int | None) -> AsyncIterator[AsyncIterator[Piece]]:
        """Follow the fill: the released bytes of ``[start, end)`` as pieces.

        Each piece is a ``memoryview`` of the fill's memory or a ``FileSpan`` of its
        file; send it whole before asking for the next. The pieces stop at ``end`` (or,
        unsized, at the verified end), and raise ``FillFailed`` if the fill fails.
        """
        fd = self._open_file()
        self.followers += 1
        self.peak_followers = max(self.peak_followers, self.followers)
        try:
            yield self._pieces(fd, start, end)
        finally:
            self.followers -= 1
            if self.followers == 0 and self.finished:
                self._forget_memory()
            os.close(fd)

    def take(self, pos: int, stop: int) -> memoryview | int:
        """Released bytes from ``pos`` (below ``stop``): from memory, or from the file.

        A view of the in-memory chunk holding ``pos`` (cut at ``stop``) or, when ``pos``
        is no longer in memory, how many bytes from ``pos`` to read from the file.
        """
        offsets = self._offsets
        if self._head < len(offsets) and pos >= offsets[self._head]:
            index = bisect.bisect_right(offsets, pos, lo=self._head) - 1
            chunk_start = offsets[index]
            chunk = self._chunks[index]
            if pos < chunk_start + len(chunk):
                return memoryview(chunk)[pos - chunk_start : stop - chunk_start]
        count = min(stop, self.written) - pos
        if count <= 0:  # pragma: no cover - the release rule makes this unreachable
            raise FillFailed(UpstreamError("released bytes are neither in memory nor on disk"))
        return count

    async def _pieces(self, fd: int, start: int, end: int | None) -> AsyncIterator[Piece]:
        pos = start
        span = self._pacing.follow_span
        while end is None or pos < end:
            # Wait for a worthwhile span (or the end): with many followers, one
            # send per few KiB released costs more than it saves in latency.
            want = pos + span if end is None else min(pos + span, end)
            while self.released < want and not self.verified and not self.finished:
                await asyncio.wait((self._changed,))
            if self.error is not None:
                raise FillFailed(self.error)
            limit = self.released if end is None else min(self.released, end)
            if pos >= limit:
                if self.verified:
                    break  # verified and everything up to ``end`` is sent
                continue
            while pos < limit:
                piece = self.take(pos, limit)
                if isinstance(piece, int):
                    yield FileSpan(fd, pos, piece)
                    pos += piece
                else:
                    yield piece
                    pos += len(piece)

    def _open_file(self) -> int:
        """A read-only descriptor on the fill's file (temp, or final once committed)."""
        if self.final is not None:
            try:
                return os.open(self.final, os.O_RDONLY)
            except FileNotFoundError:  # committed, then evicted before this reader opened it
                raise FillFailed(UpstreamError("blob evicted right after its fill")) from None
        try:
            if self._ingest is None:
                raise FileNotFoundError
            return os.open(self._ingest.temp, os.O_RDONLY)
        except FileNotFoundError:
            if self.verified:  # renamed into place (the commit runs in a worker thread)
                try:
                    return os.open(self._store.path(self.digest), os.O_RDONLY)
                except FileNotFoundError:
                    pass
            raise FillFailed(self.error or UpstreamError("fill ended")) from None

    # -- the release rule ----------------------------------------------------------------

    def _notify(self) -> None:
        self._notified = self.released
        fut, self._changed = self._changed, asyncio.get_running_loop().create_future()
        if not fut.done():
            fut.set_result(None)

    def _keep(self, chunk: bytes) -> None:
        """Take a received chunk into memory and release what the release rule allows."""
        self._offsets.append(self.received)
        self._chunks.append(chunk)
        self._in_memory += len(chunk)
        self.received += len(chunk)
        if self.size is not None:
            self.released = min(self.received, self.size - 1)
        else:
            self.released = self.received - len(chunk)  # hold the newest chunk back
        if self.released - self._notified >= self._pacing.follow_span // 2:
            self._notify()

    def _release_all(self) -> None:
        """The digest matched: every byte may go to the followers now."""
        self.size = self.received
        self.released = self.received
        self.verified = True
        if not self.ready.done():
            self.ready.set_result(None)
        self._notify()

    def _fail(self, error: RegistryError) -> None:
        self.error = error
        if not self.ready.done():
            self.ready.set_exception(error)
            self.ready.exception()  # retrieved: followers may all be gone
        self._notify()
        if error.status >= 500:
            log.warning("fill %s from %s failed: %s", self.digest, self.registry, error)

    def _on_written(self, written: int) -> None:
        """The temp file grew to ``written`` bytes: drop old in-memory chunks it holds.

        The newest ``window`` bytes stay for followers that keep up; a chunk leaves
        memory only once it is in the file, so every released byte is in one or the other.
        """
        self.written = written
        window = self.window
        head, chunks, offsets = self._head, self._chunks, self._offsets
        while (
            self._in_memory > window
            and head < len(chunks)
            and offsets[head] + len(chunks[head]) <= written
        ):
            self._in_memory -= len(chunks[head])
            head += 1
        if head > 64:  # compact now and then; readers find chunks by bisect from _head
            del offsets[:head], chunks[:head]
            head = 0
        self._head = head

    def _forget_memory(self) -> None:
        """Drop every in-memory chunk (the fill ended; the file has them all, or failed)."""
        self._offsets, self._chunks = [], []
        self._head = self._in_memory = 0

    # -- the run -----------------------------------------------------------------------

    async def _run(self) -> None:
        result = "error"
        try:
            await self._fetch()
            result = "ok"
        except RegistryError as exc:
            self._fail(exc)
        except asyncio.CancelledError:
            self._fail(UpstreamError("fill cancelled: cachesvc is shutting down"))
            raise
        except OSError as exc:
            log.error("fill %s: storage error: %s", self.digest, exc)
            self._store.health.failed("write", exc)
            self._fail(StorageUnavailable(f"cannot store the blob on this node: {exc.strerror}"))
        except Exception as exc:  # a fill must always end its followers' wait, whatever broke
            log.exception("fill %s failed unexpectedly", self.digest)
            self._fail(UpstreamError(f"fill failed unexpectedly: {type(exc).__name__}"))
        finally:
            if self.followers == 0:
                self._forget_memory()
            self._metrics.fill_seconds.labels(result).observe(time.monotonic() - self.started)
            self._metrics.fill_waiters_per_fill.observe(self.peak_followers)
            if self._on_end is not None:
                self._on_end(self)

    async def _fetch(self) -> None:
        ingest: Ingest | None = None
        try:
            async with self._opener() as body:
                self.size = body.size
                self.endpoint = body.endpoint
                ingest = self._ingest = self._store.ingest(self.digest, self._on_written)
                if self.size != 0:
                    # Followers may start now: the release rule holds the last byte back.
                    # An empty body has no last byte to hold, so it is ready only once
                    # verified (a complete empty 200 must never carry a wrong digest).
                    self.ready.set_result(None)
                await self._receive(body, ingest)
                await self._verify(ingest)
                # Verified: release the last bytes now. Durability (fsync, rename) only
                # decides whether the blob is kept, not whether these bytes are right,
                # so followers need not wait for the disk.
                self._release_all()
            self.final = await ingest.commit()
            self._notify()
        finally:
            if ingest is not None:
                await ingest.cancel()  # removes the temp file; nothing after a commit

    async def _receive(self, body: BlobBody, ingest: Ingest) -> None:
        received = self._metrics.upstream_bytes.labels(self.registry)
        chunks = body.chunks.__aiter__()
        stall = None if body.guards_stall else self._stall  # a chain resumes from a stall
        while True:
            try:
                async with asyncio.timeout(stall):
                    chunk = await anext(chunks, None)
            except TimeoutError:
                raise UpstreamTimeout(f"upstream stalled: no bytes for {self._stall:g}s") from None
            if chunk is None:
                break
            if not chunk:
                continue
            if self.size is not None and self.received + len(chunk) > self.size:
                raise DigestMismatch("upstream sent more bytes than its Content-Length")
            self._keep(chunk)
            if not body.counted:  # a chain of sources counts upstream and peer bytes itself
                received.inc(len(chunk))
            await ingest.feed(chunk)

    async def _verify(self, ingest: Ingest) -> None:
        if self.size is not None and self.received != self.size:
            raise UpstreamError(f"upstream body ended after {self.received} of {self.size} bytes")
        try:
            await ingest.verify()
        except DigestMismatch as exc:
            self._metrics.digest_mismatches.labels(self.registry).inc()
            raise DigestMismatch(f"upstream {exc.message}") from None
