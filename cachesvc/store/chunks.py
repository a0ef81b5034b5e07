"""Reading a span of an open file in chunks, each ``pread`` in a worker thread.

For bytes that cannot go out with ``sendfile`` (TLS, chunked framing, a file system
without it): a stored blob (``cachesvc.server.blobsend``) or a fill's temp file
(``cachesvc.mirror.fill.FileSpan``). Memory is bounded by one chunk.
"""

from __future__ import annotations

import asyncio
import errno
import os
from collections.abc import AsyncIterator


async def read_chunks(fd: int, offset: int, count: int, chunk: int) -> AsyncIterator[bytes]:
    """``count`` bytes of ``fd`` from ``offset``, at most ``chunk`` at a time.

    ``OSError`` (``EIO``) when the file ends before them; other read errors as raised.
    """
    loop = asyncio.get_running_loop()
    while count > 0:
        data = await loop.run_in_executor(None, os.pread, fd, min(chunk, count), offset)
        if not data:
            raise OSError(errno.EIO, "file shorter than the bytes to read")
        offset += len(data)
        count -= len(data)
        yield data
