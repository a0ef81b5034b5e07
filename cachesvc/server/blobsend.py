"""Sending a stored blob: an ordinary ``StreamResponse`` and the file's bytes after it.

Hits go out the way fills do (``cachesvc.server.mirror_api._send_fill``): aiohttp
writes the status line and headers, then ``cachesvc.server.zerocopy`` sends the
file straight from the page cache to the socket, on asyncio and on uvloop alike.
Where the transport has no socket of its own (TLS, which must encrypt every byte;
pipes; a file system without sendfile) the bytes are read in chunks in a worker
thread and written with ``StreamResponse.write``: public aiohttp only, memory bounded
by one chunk. Counting goes through ``on_sent`` as the socket takes the bytes, so
a client that leaves midway is accounted for what it really received.

The caller holds the blob's lease around all of this (``BlobAnswer`` is a context
manager); this module only opens, sends and closes.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from aiohttp import web

from cachesvc.errors import BlobUnknown
from cachesvc.oci import Digest
from cachesvc.server import zerocopy
from cachesvc.store.chunks import read_chunks
from cachesvc.store.verification import checked_spans

READ_CHUNK = 256 * 1024  # bytes read per step when the file cannot be sent zero-copy


def span_response(
    headers: dict[str, str], size: int, span: tuple[int, int] | None
) -> web.StreamResponse:
    """A 200 for all ``size`` bytes, or a 206 with ``Content-Range`` for ``span``."""
    response = web.StreamResponse(status=200, headers=headers)
    if span is None:
        response.content_length = size
        return response
    start, end = span
    response.set_status(206)
    response.headers["Content-Range"] = f"bytes {start}-{end - 1}/{size}"
    response.content_length = end - start
    return response


async def send_file(
    request: web.BaseRequest,
    response: web.StreamResponse,
    path: Path,
    span: tuple[int, int],
    on_sent: Callable[[int], None],
    check: Digest | None = None,
) -> None:
    """Open ``path``, send ``response``'s headers, then bytes ``[start, end)`` of the file.

    A file that is gone (removed behind the index's back) is ``BlobUnknown`` before
    the status line; after it, ``ConnectionError`` means the client left, and any
    other ``OSError`` is a read failure the caller must not mistake for success.
    With ``check`` (a whole file this process has not verified) the bytes go out as
    ``checked_spans`` releases them: hashed first, the last byte only after the
    digest matched; ``StoredMismatch`` otherwise (the caller aborts and drops it).
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise BlobUnknown(f"blob file {path.name} is no longer stored; retry") from None
    try:
        await response.prepare(request)
        start, end = span
        if check is not None:
            async for offset, count in checked_spans(fd, check, end):
                await _send_range(request, response, fd, offset, count, on_sent)
        elif end > start:
            await _send_range(request, response, fd, start, end - start, on_sent)
        await response.write_eof()
    finally:
        os.close(fd)


async def _send_range(
    request: web.BaseRequest,
    response: web.StreamResponse,
    fd: int,
    offset: int,
    count: int,
    on_sent: Callable[[int], None],
) -> None:
    transport = request.transport
    if transport is None:
        raise ConnectionResetError("client went away")
    try:
        await zerocopy.sendfile(transport, fd, offset, count, on_sent)
    except NotImplementedError:  # raised before any byte was sent (zerocopy's contract)
        await _copy(response, fd, offset, count, on_sent)


async def _copy(
    response: web.StreamResponse,
    fd: int,
    offset: int,
    count: int,
    on_sent: Callable[[int], None],
) -> None:
    """Read + write in ``READ_CHUNK`` steps, the reads off the event loop."""
    async for data in read_chunks(fd, offset, count, READ_CHUNK):
        await response.write(data)
        on_sent(len(data))
