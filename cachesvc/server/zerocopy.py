"""Zero-copy file sends, on asyncio and on uvloop (which has no ``loop.sendfile``).

uvloop's ``loop.sendfile`` raises ``NotImplementedError``, and aiohttp then reads the
file into memory and writes it (about half the speed for a large layer, measured in
the benchmarks). asyncio's sends with ``os.sendfile`` but, after every partial send,
waits for the selector before the next one even while the socket has room (warm
256 MiB hits, alternating runs of ``python -m benchmarks --only warm --reps 7``:
2,454-2,682 MiB/s with it, 2,639-3,075 with this). This sends until the socket is full:
once the transport has written everything before the body (the headers), it calls
``os.sendfile`` on a duplicate of the socket's descriptor and waits on that duplicate
when the socket is full (uvloop refuses ``add_writer`` on a descriptor a transport
owns; the duplicate is a different number for the same socket). The transport writes
nothing meanwhile: aiohttp waits for this send before it writes anything else.

The socket is corked (``TCP_CORK``, as nginx's ``tcp_nopush``) while the file goes out,
and uncorked after its last byte, which pushes the rest at once. aiohttp turns
``TCP_NODELAY`` on, so each short ``sendfile`` would otherwise end in a part-filled
segment. Measured by hand (a small server around this function, 25 alternating warm
256 MiB hits of one file; benchmarks/README.md, "Warm hit"): 2,210 MiB/s and 106 ms of
CPU per hit uncorked, 2,708 MiB/s and 87 ms corked, nginx 2,660 MiB/s and 88 ms. With
the read-ahead change, ``python -m benchmarks.ab``: warm hits 1.28x, CPU 0.83x.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import socket
from collections.abc import Callable
from typing import Any

SEND_CHUNK = 16 * 1024 * 1024  # at most this much per sendfile call
_DRAIN_POLL = 0.0005  # seconds between checks that the headers left the transport
# sendfile's answers for "not for this file or socket" (Linux: EINVAL, e.g. some FUSE
# and network file systems; ENOSYS, EOPNOTSUPP elsewhere).
_NO_SENDFILE = frozenset({errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP})


async def _writable(loop: asyncio.AbstractEventLoop, fd: int) -> None:
    ready = loop.create_future()
    loop.add_writer(fd, ready.set_result, None)
    try:
        await ready
    finally:
        loop.remove_writer(fd)


def _cork(sock: Any, on: bool) -> None:
    """Hold (or push) part-filled segments; a socket that refuses just is not corked."""
    if hasattr(socket, "TCP_CORK"):
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_CORK, 1 if on else 0)


async def _drained(transport: asyncio.BaseTransport, buffered: Callable[[], int]) -> None:
    """Wait until the transport has written what it holds (the headers)."""
    while buffered():
        if transport.is_closing():
            raise ConnectionResetError("client went away")
        await asyncio.sleep(_DRAIN_POLL)


async def sendfile(
    transport: asyncio.BaseTransport,
    fd: int,
    offset: int,
    count: int,
    on_sent: Callable[[int], None] | None = None,
) -> None:
    """Send ``count`` bytes of file ``fd`` from ``offset`` on ``transport``'s socket.

    ``on_sent`` is told each count the socket took (what a client that leaves midway got).

    Raises ``NotImplementedError`` before sending anything when the transport has no
    socket (TLS, pipes) or the file cannot be sent with sendfile, so callers can fall
    back to read + write; ``ConnectionError`` when the client left.
    """
    sock = transport.get_extra_info("socket")
    # uvloop's transports are not registered with asyncio's ABCs: look for the method.
    buffered = getattr(transport, "get_write_buffer_size", None)
    if sock is None or buffered is None:
        raise NotImplementedError("no socket to send a file on")
    if transport.get_extra_info("ssl_object") is not None:
        # A TLS transport (either loop) reports the TCP socket under it: bytes sent
        # there would skip the encryption and break the TLS stream.
        raise NotImplementedError("a TLS transport: the file must be encrypted")
    await _drained(transport, buffered)
    loop = asyncio.get_running_loop()
    out = os.dup(sock.fileno())
    first = True  # nothing sent yet: an unsupported sendfile can still fall back
    _cork(sock, True)
    try:
        while count > 0:
            if transport.is_closing():
                raise ConnectionResetError("client went away")
            want = min(count, SEND_CHUNK)
            try:
                sent = os.sendfile(out, fd, offset, want)
            except BlockingIOError:
                await _writable(loop, out)
                continue
            except OSError as exc:
                if exc.errno in _NO_SENDFILE and first:
                    # A file system (or kernel) without sendfile for this file: the
                    # caller reads and writes instead (what AIOHTTP_NOSENDFILE was for).
                    raise NotImplementedError(f"sendfile unsupported: {exc}") from exc
                raise
            first = False
            if sent == 0:
                raise OSError(errno.EIO, "file ended before the bytes to send")
            offset += sent
            count -= sent
            if on_sent is not None:
                on_sent(sent)
            if count > 0 and sent < want:
                # A short send means the socket buffer is full: trying again at once only
                # earns an EAGAIN (half the sendfile calls of a warm hit were those).
                await _writable(loop, out)
    finally:
        _cork(sock, False)
        os.close(out)
