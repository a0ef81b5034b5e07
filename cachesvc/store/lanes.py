"""Hashing and writing a blob's bytes off the event loop, in two lanes.

The loop copies received bytes into page-aligned staging buffers (``STAGE_BYTES``
each, from a small pool). A full stage goes to two ordered *lanes* that run side by
side in worker threads: one hashes it, one writes it to the temp file. Whole stages
keep both lanes cheap: one GIL hand-off per stage (not per received chunk), and
writes with ``O_DIRECT``, so the kernel copies nothing into the page cache: a cold
pull costs the node no page-cache churn for bytes containerd is about to store
itself, and the write costs almost no CPU. Followers of a fill are served from its
memory while it runs (see ``cachesvc.mirror.fill``), so nothing needs these bytes cached;
``read_ahead`` brings a committed blob into the page cache for the next hit.

Filesystems that refuse ``O_DIRECT`` (tmpfs, some overlay setups) get ordinary
buffered writes of the same stages; ``BlobWriter.direct`` says which is in use.
This is the machinery under ``cachesvc.store.ingest.Ingest``, which owns the temp
file's life (name, verify, commit, cancel).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import mmap
import os
import threading
from collections.abc import Callable
from pathlib import Path

from cachesvc.oci import Hasher

ALIGN = 4096  # O_DIRECT offsets and lengths are multiples of the logical block size
STAGE_BYTES = 2 * 1024 * 1024  # one staging buffer: a multiple of ALIGN
STAGES_PER_FILL = 3  # one filling, up to two in the lanes
POOL_KEEP = 12  # idle stages kept for the next fills (their pages stay mapped)

_pool: list[mmap.mmap] = []
_pool_lock = threading.Lock()


def _take_stage() -> mmap.mmap:
    with _pool_lock:
        if _pool:
            return _pool.pop()
    return mmap.mmap(-1, STAGE_BYTES)  # anonymous mappings are page-aligned


def _give_stage(stage: mmap.mmap) -> None:
    with _pool_lock:
        if len(_pool) < POOL_KEEP:
            _pool.append(stage)
            return
    stage.close()


def _write_all(fd: int, data: memoryview, offset: int) -> None:
    while data:
        done = os.pwrite(fd, data, offset)
        if done <= 0:  # pragma: no cover - pwrite to a regular file never returns 0
            raise OSError(errno.EIO, "short write to the temp file")
        data, offset = data[done:], offset + done


READ_AHEAD_BUFFER = 1024 * 1024  # bytes per read while reading a committed blob ahead


def read_ahead(path: Path) -> None:
    """Read ``path`` once, so that its next hit is sent from memory.

    A blob written with ``O_DIRECT`` is not in the page cache, and the next hit of a
    just-pulled layer (a peer's, in cluster mode) should be a memory hit. Reading the
    file sequentially into one reused buffer does two things the kernel's cheaper
    ways did not (measured by hand on this machine, a 2-core VM, 256 MiB blobs; the
    setup is in benchmarks/README.md, "Warm hit"):

    - the pages come in large folios through the ordinary readahead (306-1,049 folios
      for 65,536 pages, counted from /proc/kpageflags); ``posix_fadvise(WILLNEED)``,
      used before, cached 65,536 4 KiB pages, and sending a file from those cost a
      server 120 ms of CPU per hit against 110 ms (15 alternating runs);
    - the CPU touches every page once, here, in the background: the first hit of a
      blob whose pages only the disk had written ran at 420-454 MiB/s, with the
      client's copy touching each page first (on this VM, probably the hypervisor
      backing fresh guest pages), and at 2,159-2,425 MiB/s after this read.
      ``sendfile`` to ``/dev/null`` gave the large folios without the touch.

    It costs a copy, about 0.05 s of CPU per 256 MiB in a worker thread (the read
    releases the GIL). Best effort: errors are ignored (the file may be gone already).
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return
    buffer = bytearray(READ_AHEAD_BUFFER)
    try:
        while os.readv(fd, [buffer]):
            pass
    except OSError:
        pass
    finally:
        os.close(fd)


class BlobWriter:
    """Writes stages in order to a new file (worker-thread side)."""

    def __init__(self, path: Path, *, direct: bool = True) -> None:
        self.fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        self.direct = False
        self.written = 0
        if direct and hasattr(os, "O_DIRECT"):
            try:
                flags = fcntl.fcntl(self.fd, fcntl.F_GETFL)
                fcntl.fcntl(self.fd, fcntl.F_SETFL, flags | os.O_DIRECT)
            except OSError:  # the filesystem refuses O_DIRECT: buffered writes
                pass
            else:
                self.direct = True

    def write(self, data: memoryview) -> None:
        """Append ``data`` (a stage: page-aligned; all but the last are whole blocks)."""
        whole = len(data) - len(data) % ALIGN if self.direct else len(data)
        try:
            _write_all(self.fd, data[:whole], self.written)
        except OSError as exc:
            if not (self.direct and exc.errno == errno.EINVAL):
                raise
            # The device wants a larger alignment than ALIGN: buffered writes from here on.
            self._buffered()
            self.direct = False
            whole = len(data)
            _write_all(self.fd, data, self.written)
        self.written += whole
        if whole < len(data):
            # The last stage's tail is shorter than a block: O_DIRECT cannot write it.
            # (Only the last stage has one: nothing is written after it.)
            self._buffered()
            _write_all(self.fd, data[whole:], self.written)
            self.written = self.written + len(data) - whole

    def _buffered(self) -> None:
        flags = fcntl.fcntl(self.fd, fcntl.F_GETFL)
        fcntl.fcntl(self.fd, fcntl.F_SETFL, flags & ~os.O_DIRECT)

    def close(self) -> None:
        """Close the file (safe to call twice)."""
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


class _Lane:
    """Runs ``work`` on stages (by index) in order, in worker threads, one at a time."""

    def __init__(self, work: Callable[[int], None], done: Callable[[int], None]) -> None:
        self._work = work
        self._done = done
        self._queue: asyncio.Queue[int | None] = asyncio.Queue()
        self.task = asyncio.get_running_loop().create_task(self._run())

    def put(self, index: int | None) -> None:
        self._queue.put_nowait(index)

    def stop(self) -> None:
        """Drop the stages not yet started; the one in a worker finishes first."""
        while not self._queue.empty():
            self._queue.get_nowait()
        self._queue.put_nowait(None)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while (index := await self._queue.get()) is not None:
            await loop.run_in_executor(None, self._work, index)
            self._done(index)


class Absorber:
    """Takes a fill's bytes on the loop; hashes and writes them in two lanes.

    ``feed`` each chunk, then ``end``; ``written`` bytes are in the file at any time
    and ``on_written`` is called on the loop as it grows. ``close`` always, last.
    """

    def __init__(
        self,
        path: Path,
        hasher: Hasher,
        on_written: Callable[[int], None],
        *,
        direct: bool = True,
    ) -> None:
        self.writer = BlobWriter(path, direct=direct)
        self._hasher = hasher
        self._on_written = on_written
        self._stages = [_take_stage() for _ in range(STAGES_PER_FILL)]
        self._views = [memoryview(stage) for stage in self._stages]
        self._lengths = [0] * STAGES_PER_FILL
        self._busy = [0] * STAGES_PER_FILL  # lanes still working on each stage
        self._free: asyncio.Queue[int] = asyncio.Queue()
        for index in range(1, STAGES_PER_FILL):
            self._free.put_nowait(index)
        self._current = 0
        self._filled = 0
        self._failure: BaseException | None = None
        self._hash = self._lane(hasher.update)  # releases the GIL for a whole stage
        self._write = self._lane(self.writer.write)

    @property
    def written(self) -> int:
        """Bytes in the file (readable with ``pread``/``sendfile``)."""
        return self.writer.written

    @property
    def direct(self) -> bool:
        """Whether the writes bypass the page cache (``O_DIRECT``)."""
        return self.writer.direct

    def hexdigest(self) -> str:
        """The digest of every byte fed (only meaningful after ``end``)."""
        return self._hasher.hexdigest()

    async def feed(self, chunk: bytes) -> None:
        """Copy ``chunk`` into the stages; waits only when both lanes are behind."""
        view = memoryview(chunk)
        while view:
            count = min(len(view), STAGE_BYTES - self._filled)
            self._views[self._current][self._filled : self._filled + count] = view[:count]
            self._filled += count
            view = view[count:]
            if self._filled == STAGE_BYTES:
                await self._submit()

    async def end(self) -> None:
        """Hand over the last partial stage and wait until every byte is hashed and written."""
        if self._filled:
            await self._submit()
        self._hash.put(None)
        self._write.put(None)
        await asyncio.gather(self._hash.task, self._write.task)
        self._raise_failure()

    async def close(self) -> None:
        """Stop the lanes (waiting for a stage in a worker), close the file, return stages."""
        for lane in (self._hash, self._write):
            lane.stop()
        with contextlib.suppress(BaseException):
            await asyncio.shield(asyncio.gather(self._hash.task, self._write.task))
        self.writer.close()
        for view in self._views:
            view.release()
        for stage in self._stages:
            _give_stage(stage)
        self._stages = []

    async def _submit(self) -> None:
        self._raise_failure()
        index = self._current
        self._lengths[index] = self._filled
        self._busy[index] = 2
        self._hash.put(index)
        self._write.put(index)
        self._current = await self._next_free()
        self._filled = 0

    async def _next_free(self) -> int:
        get = asyncio.ensure_future(self._free.get())
        lanes = (self._hash.task, self._write.task)
        await asyncio.wait((get, *lanes), return_when=asyncio.FIRST_COMPLETED)
        if not get.done():
            get.cancel()
            self._raise_failure()
        return get.result()

    def _lane(self, work: Callable[[memoryview], None]) -> _Lane:
        def on_stage(index: int) -> None:
            work(self._views[index][: self._lengths[index]])

        lane = _Lane(on_stage, self._stage_done)
        lane.task.add_done_callback(self._lane_ended)
        return lane

    def _lane_ended(self, task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None and self._failure is None:
            self._failure = task.exception()

    def _raise_failure(self) -> None:
        if self._failure is not None:
            raise self._failure

    def _stage_done(self, index: int) -> None:
        self._busy[index] -= 1
        if self._busy[index] == 0:
            self._free.put_nowait(index)
        self._on_written(self.writer.written)
