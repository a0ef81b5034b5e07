"""Writing one blob into the store, as distribution's BlobWriter: feed, then commit or cancel.

::

    async with store.ingest(digest) as ingest:   # temp/<hex>.<random>, opened O_EXCL
        for chunk in body:
            await ingest.feed(chunk)             # hashed and written in two lanes
        await ingest.verify()                    # optional: digest checked, nothing durable yet
        await ingest.commit()                    # verify, fsync, atomic rename, usage counted
    # leaving the block without commit() (an error, a cancellation) cancels: the temp
    # file is closed and removed at once; after commit() leaving does nothing

``verify`` is separate from ``commit`` so a fill can release its last bytes to its
followers as soon as the digest matched: durability only decides whether the blob is
kept, not whether the bytes are right. A wrong digest is refused (``DigestMismatch``)
and nothing is kept. The bytes go through ``cachesvc.store.lanes`` (``O_DIRECT`` where
the filesystem takes it), so a committed blob is read ahead into the page cache in
the background: the next hit of a just-pulled layer should be a memory hit.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Callable
from pathlib import Path
from types import TracebackType

from cachesvc.errors import DigestMismatch
from cachesvc.oci import Digest
from cachesvc.store.content import Content, discard
from cachesvc.store.lanes import Absorber, read_ahead


class Ingest:
    """One blob on its way into the store; ``commit()`` or ``cancel()`` ends it."""

    def __init__(
        self,
        content: Content,
        digest: Digest,
        *,
        on_written: Callable[[int], None] | None = None,
        on_commit: Callable[[Digest], None] | None = None,
        direct: bool = True,
    ) -> None:
        """Open a fresh temp file (``OSError`` if it cannot be created)."""
        self.digest = digest
        self.temp = content.new_temp(digest)
        self.final: Path | None = None  # set by commit()
        self.fed = 0  # bytes fed so far
        self._content = content
        self._on_commit = on_commit
        self._verified = False
        self._ended = False  # committed or cancelled
        self._absorber = Absorber(
            self.temp, digest.hasher(), on_written or (lambda _: None), direct=direct
        )

    @property
    def written(self) -> int:
        """Bytes in the temp file (readable with ``pread``/``sendfile``)."""
        return self._absorber.written

    @property
    def direct(self) -> bool:
        """Whether the writes bypass the page cache (``O_DIRECT``)."""
        return self._absorber.direct

    async def feed(self, chunk: bytes) -> None:
        """Take the next bytes of the blob; waits only when both lanes are behind."""
        if self._verified or self._ended:
            raise RuntimeError("feed after verify, commit or cancel")
        await self._absorber.feed(chunk)
        self.fed += len(chunk)

    async def verify(self) -> None:
        """Wait until every byte fed is hashed and written; check the digest.

        A mismatch cancels the ingest (nothing is kept) and raises ``DigestMismatch``.
        """
        if self._verified:
            return
        await self._absorber.end()
        actual = self._absorber.hexdigest()
        if actual != self.digest.hex:
            await self.cancel()
            raise DigestMismatch(
                f"bytes for {self.digest} have digest {self.digest.algorithm}:{actual}; "
                "nothing was kept"
            )
        self._verified = True

    async def commit(self) -> Path:
        """Verify (unless done), fsync, rename into place, count the usage; the path.

        On any failure the temp file is removed; the store holds the blob only if this
        returns (or if the rename in its worker thread completed as it was cancelled).
        """
        await self.verify()
        loop = asyncio.get_running_loop()
        try:
            await loop.run_in_executor(None, os.fsync, self._absorber.writer.fd)
            await self._absorber.close()
            self.final = await loop.run_in_executor(
                None, self._content.commit, self.temp, self.digest
            )
        except BaseException:
            await self.cancel()
            raise
        self._ended = True
        if self._on_commit is not None:
            self._on_commit(self.digest)
        if self.direct:
            # Not awaited: no client waits for the page cache to fill. (Refused once the
            # executor is shutting down: then it does not matter.)
            with contextlib.suppress(RuntimeError):
                loop.run_in_executor(None, read_ahead, self.final)
        return self.final

    async def cancel(self) -> None:
        """Stop the lanes, close and remove the temp file now (safe at any time, twice)."""
        if self._ended:
            return
        self._ended = True
        try:
            await self._absorber.close()
        finally:
            discard(self.temp)

    async def __aenter__(self) -> Ingest:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.cancel()  # does nothing after commit()
