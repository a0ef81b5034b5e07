"""Single-flight blob fills: one upstream fetch per digest, however many clients ask.

A ``Fill`` is a task of its own. It opens upstream, keeps the newest bytes in memory
for its followers, hashes and writes the body to a temp file in worker threads (see
``cachesvc.store.ingest``), and only after the digest matched does it release the last
bytes, fsync and rename the file into place. Clients never own the fill: they
*follow* it, taking bytes from memory while they keep up and from the temp file when
they fall behind (or join late), so one that disconnects leaves the fill running.

Release rule (the heart of "nothing unverified is served as complete"): while a fill
runs, followers may send ``released`` bytes, which is at most ``size - 1`` when the
size is known and lags the newest chunk when it is not. The final bytes are released
only after verification; on any failure followers get ``FillFailed`` and their
connections are aborted, so no client ever holds a complete, wrong body.
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
from pathlib import Path

from cachesvc.errors import DigestMismatch, RegistryError, UpstreamError, UpstreamTimeout
from cachesvc.metrics import Metrics
from cachesvc.mirror.heap import release_free_memory
from cachesvc.oci import Digest
from cachesvc.store.ingest import Absorber, read_ahead
from cachesvc.store.store import Store
from cachesvc.upstream.body import BlobBody

log = logging.getLogger("cachesvc.fill")

MEMORY_BYTES = 4 * 1024 * 1024  # newest bytes a fill keeps in memory for its followers
MEMORY_TOTAL = 32 * 1024 * 1024  # shared by all fills: many at once keep less each
TRIM_DELAY = 1.0  # seconds after the last fill ended before free heap memory is returned
READ_CHUNK = 512 * 1024  # bytes a follower reads from the temp file at once
FOLLOW_SPAN = 1024 * 1024  # bytes a follower waits for before sending (unless the end)
NOTIFY_STEP = FOLLOW_SPAN // 2  # released bytes between wake-ups of the followers


BodyOpener = Callable[[], AbstractAsyncContextManager[BlobBody]]


class FillFailed(Exception):
    """Raised into followers when the fill they stream from failed after headers."""

    def __init__(self, cause: RegistryError) -> None:
        super().__init__(str(cause))
        self.cause = cause


class Fill:
    """One in-progress fetch of one blob; see the module docstring for the rules."""

    def __init__(self, digest: Digest, temp: Path, registry: str, destination: Path) -> None:
        self.digest = digest
        self.temp = temp
        self.destination = destination  # where a verified fill is renamed to
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
        loop = asyncio.get_running_loop()
        self.ready: asyncio.Future[None] = loop.create_future()
        self._changed: asyncio.Future[None] = loop.create_future()
        self.task: asyncio.Task[None] | None = None
        # The newest bytes as received, for followers that keep up: chunk i starts at
        # _offsets[i]; entries before _head are dropped (compacted now and then).
        self._offsets: list[int] = []
        self._chunks: list[bytes] = []
        self._head = 0
        self._in_memory = 0  # bytes in _chunks[_head:]
        self._notified = 0  # ``released`` when followers were last woken
        self.window = MEMORY_BYTES  # written bytes kept in memory (the manager shares it out)

    @property
    def finished(self) -> bool:
        """True once the fill committed or failed."""
        return self.final is not None or self.error is not None

    def _notify(self) -> None:
        self._notified = self.released
        fut, self._changed = self._changed, asyncio.get_running_loop().create_future()
        if not fut.done():
            fut.set_result(None)

    async def wait_ready(self) -> None:
        """Wait for upstream's response headers; raises the error if the fill failed first."""
        await asyncio.wait((self.ready,))
        if self.ready.exception() is not None:
            raise self.ready.exception()  # type: ignore[misc]

    async def _wait_beyond(self, offset: int) -> None:
        while self.released <= offset and not self.verified and not self.finished:
            await asyncio.wait((self._changed,))

    def keep(self, chunk: bytes) -> None:
        """Take a received chunk into memory and release what the release rule allows."""
        self._offsets.append(self.received)
        self._chunks.append(chunk)
        self._in_memory += len(chunk)
        self.received += len(chunk)
        if self.size is not None:
            self.released = min(self.received, self.size - 1)
        else:
            self.released = self.received - len(chunk)  # hold the newest chunk back
        # Followers wait for FOLLOW_SPAN at a time: waking them per chunk (16 followers,
        # 256 KiB chunks) would cost more loop time than the sends themselves.
        if self.released - self._notified >= NOTIFY_STEP:
            self._notify()

    def on_written(self, written: int) -> None:
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

    def forget_memory(self) -> None:
        """Drop every in-memory chunk (the fill ended; the file has them all, or failed)."""
        self._offsets, self._chunks = [], []
        self._head = self._in_memory = 0

    def take(self, pos: int, stop: int) -> memoryview | int:
        """Released bytes from ``pos`` (below ``stop``): from memory, or from the file.

        Returns a view of the in-memory chunk holding ``pos`` (cut at ``stop``) or, when
        ``pos`` is no longer in memory, how many bytes from ``pos`` to read from the
        temp file (``open_reader``).
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

    def open_reader(self) -> int:
        """A read-only descriptor on the fill's file (temp, or final once committed)."""
        if self.final is not None:
            try:
                return os.open(self.final, os.O_RDONLY)
            except FileNotFoundError:  # committed, then evicted before this reader opened it
                raise FillFailed(UpstreamError("blob evicted right after its fill")) from None
        try:
            return os.open(self.temp, os.O_RDONLY)
        except FileNotFoundError:
            if self.verified:  # renamed into place (the commit runs in a worker thread)
                try:
                    return os.open(self.destination, os.O_RDONLY)
                except FileNotFoundError:
                    pass
            raise FillFailed(self.error or UpstreamError("fill ended")) from None

    async def spans(self, start: int, end: int | None) -> AsyncIterator[tuple[int, int]]:
        """Yield ``(offset, count)`` spans of ``[start, end)`` as they are released.

        The caller sends each span (``take``) before asking for the next. Raises
        ``FillFailed`` if the fill fails.
        """
        self.followers += 1
        self.peak_followers = max(self.peak_followers, self.followers)
        try:
            pos = start
            while end is None or pos < end:
                # Wait for a worthwhile span (or the end): with many followers, one
                # send per few KiB released costs more than it saves in latency.
                want = pos + FOLLOW_SPAN if end is None else min(pos + FOLLOW_SPAN, end)
                await self._wait_beyond(want - 1)
                if self.error is not None:
                    raise FillFailed(self.error)
                limit = self.released if end is None else min(self.released, end)
                if pos >= limit:
                    if self.verified:
                        break  # verified and everything up to ``end`` is sent
                    continue
                yield pos, limit - pos
                pos = limit
        finally:
            self.followers -= 1
            if self.followers == 0 and self.finished:
                self.forget_memory()


class FillManager:
    """Owns every running fill; at most one per digest."""

    def __init__(self, store: Store, metrics: Metrics, *, stall_timeout: float) -> None:
        self._store = store
        self._metrics = metrics
        self._stall = stall_timeout
        self._fills: dict[str, Fill] = {}

    def get(self, digest: Digest) -> Fill | None:
        """The running fill for ``digest``, if any."""
        return self._fills.get(str(digest))

    def running(self) -> list[Fill]:
        """Every running fill (for status and metrics)."""
        return list(self._fills.values())

    def start(self, digest: Digest, registry: str, opener: BodyOpener) -> tuple[Fill, bool]:
        """Join the running fill for ``digest`` or start one; returns (fill, started)."""
        existing = self._fills.get(str(digest))
        if existing is not None:
            return existing, False
        fill = Fill(digest, self._store.new_temp(digest), registry, self._store.path(digest))
        self._fills[str(digest)] = fill
        self._share_memory()
        fill.task = asyncio.get_running_loop().create_task(
            self._run(fill, opener), name=f"fill {digest}"
        )
        self._metrics.fills_in_flight.inc()
        return fill, True

    def _trim_if_idle(self) -> None:
        if not self._fills:
            release_free_memory()

    def _share_memory(self) -> None:
        window = min(MEMORY_BYTES, MEMORY_TOTAL // max(1, len(self._fills)))
        for fill in self._fills.values():
            fill.window = window

    async def close(self) -> None:
        """Cancel every running fill (their temp files are removed)."""
        tasks = [f.task for f in self._fills.values() if f.task is not None]
        for task in tasks:
            task.cancel()
        if tasks:
            self._metrics.shutdown_aborted.inc(len(tasks))
            await asyncio.gather(*tasks, return_exceptions=True)

    async def wait_idle(self, grace: float) -> None:
        """Let running fills finish, up to ``grace`` seconds (graceful shutdown)."""
        tasks = [f.task for f in self._fills.values() if f.task is not None]
        if tasks:
            await asyncio.wait(tasks, timeout=grace)

    async def _run(self, fill: Fill, opener: BodyOpener) -> None:
        result = "error"
        try:
            await self._fetch(fill, opener)
            result = "ok"
        except RegistryError as exc:
            self._fail(fill, exc)
        except asyncio.CancelledError:
            self._fail(fill, UpstreamError("fill cancelled: cachesvc is shutting down"))
            raise
        except OSError as exc:
            log.error("fill %s: storage error: %s", fill.digest, exc)
            self._fail(fill, UpstreamError(f"storage error while caching the blob: {exc}"))
        except Exception as exc:  # a fill must always end its followers' wait, whatever broke
            log.exception("fill %s failed unexpectedly", fill.digest)
            self._fail(fill, UpstreamError(f"fill failed unexpectedly: {type(exc).__name__}"))
        finally:
            self._fills.pop(str(fill.digest), None)
            self._share_memory()
            if fill.followers == 0:
                fill.forget_memory()
            if not self._fills:
                # Followers still sending the last bytes hold chunks: trim a little later.
                loop = asyncio.get_running_loop()
                loop.call_later(TRIM_DELAY, self._trim_if_idle)
            self._metrics.fills_in_flight.dec()
            self._metrics.fill_seconds.labels(result).observe(time.monotonic() - fill.started)
            self._metrics.fill_waiters_per_fill.observe(fill.peak_followers)
            if fill.final is None:
                self._store.discard(fill.temp)

    def _fail(self, fill: Fill, error: RegistryError) -> None:
        fill.error = error
        if not fill.ready.done():
            fill.ready.set_exception(error)
            fill.ready.exception()  # retrieved: followers may all be gone
        fill._notify()
        if error.status >= 500:
            log.warning("fill %s from %s failed: %s", fill.digest, fill.registry, error)

    async def _fetch(self, fill: Fill, opener: BodyOpener) -> None:
        loop = asyncio.get_running_loop()
        async with opener() as body:
            fill.size = body.size
            fill.endpoint = body.endpoint
            absorber = Absorber(fill.temp, fill.digest.hasher(), fill.on_written)
            try:
                if fill.size != 0:
                    # Followers may start now: the release rule holds the last byte back.
                    # An empty body has no last byte to hold, so it is ready only once
                    # verified (a complete empty 200 must never carry a wrong digest).
                    fill.ready.set_result(None)
                received = self._metrics.upstream_bytes.labels(fill.registry)
                chunks = body.chunks.__aiter__()
                while True:
                    try:
                        async with asyncio.timeout(self._stall):
                            chunk = await anext(chunks, None)
                    except TimeoutError:
                        raise UpstreamTimeout(
                            f"upstream stalled: no bytes for {self._stall:g}s"
                        ) from None
                    if chunk is None:
                        break
                    if not chunk:
                        continue
                    if fill.size is not None and fill.received + len(chunk) > fill.size:
                        raise DigestMismatch("upstream sent more bytes than its Content-Length")
                    fill.keep(chunk)
                    received.inc(len(chunk))
                    await absorber.feed(chunk)
                await absorber.end()
                if fill.size is not None and fill.received != fill.size:
                    raise UpstreamError(
                        f"upstream body ended after {fill.received} of {fill.size} bytes"
                    )
                if absorber.hexdigest() != fill.digest.hex:
                    self._metrics.digest_mismatches.labels(fill.registry).inc()
                    raise DigestMismatch(
                        f"upstream bytes for {fill.digest} have digest "
                        f"{fill.digest.algorithm}:{absorber.hexdigest()}; nothing was kept"
                    )
                # Verified: release the last bytes now. Durability (fsync, rename) only
                # decides whether the blob is kept, not whether these bytes are right,
                # so followers need not wait for the disk.
                fill.size = fill.received
                fill.released = fill.received
                fill.verified = True
                if not fill.ready.done():
                    fill.ready.set_result(None)
                fill._notify()
                await loop.run_in_executor(None, os.fsync, absorber.writer.fd)
            finally:
                await absorber.close()
        fill.final = await loop.run_in_executor(None, self._store.commit, fill.temp, fill.digest)
        fill._notify()
        if absorber.direct:
            # Not awaited: no client waits for the page cache to fill. (Refused once the
            # executor is shutting down: then it does not matter.)
            with contextlib.suppress(RuntimeError):
                loop.run_in_executor(None, read_ahead, fill.final)


async def drain(fill: Fill) -> None:
    """Wait for a fill to end, whatever its outcome."""
    if fill.task is not None:
        with contextlib.suppress(BaseException):
            await asyncio.shield(fill.task)
