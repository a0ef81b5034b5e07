"""Zero-copy sends without ``loop.sendfile``: exact bytes on both loops, a slow reader
(the socket fills and the send waits), a client that leaves, and no socket at all."""

from __future__ import annotations

import asyncio
import os
import socket
import ssl
import struct
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import pytest
import trustme
import uvloop

from cachesvc import zerocopy

RUNNERS: dict[str, Callable[[Coroutine[Any, Any, None]], None]] = {
    "asyncio": asyncio.run,
    "uvloop": uvloop.run,
}


def serve_once(
    runner: str, path: Path, offset: int, count: int, *, client_delay: float = 0.0
) -> bytes:
    """Send ``count`` bytes of ``path`` from ``offset`` to one client; return what it got."""
    received = bytearray()

    async def scenario() -> None:
        sent = asyncio.get_running_loop().create_future()

        async def on_client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            fd = os.open(path, os.O_RDONLY)
            try:
                writer.write(b"HEAD")  # something before the body, as the headers are
                await zerocopy.sendfile(writer.transport, fd, offset, count)
                sent.set_result(None)
            except BaseException as exc:
                sent.set_exception(exc)
            finally:
                os.close(fd)
                writer.close()

        server = await asyncio.start_server(on_client, "127.0.0.1", 0)
        try:
            port = server.sockets[0].getsockname()[1]
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            if client_delay:
                await asyncio.sleep(client_delay)  # the socket buffers fill: sendfile must wait
            async with asyncio.timeout(60):
                while chunk := await reader.read(1 << 20):
                    received.extend(chunk)
                writer.close()
                await sent
        finally:
            server.close()
            await server.wait_closed()

    RUNNERS[runner](scenario())
    return bytes(received)


@pytest.mark.parametrize("runner", sorted(RUNNERS))
def test_the_bytes_after_what_was_written_before(runner: str, tmp_path: Path) -> None:
    data = os.urandom(24 * 1024 * 1024 + 123)
    path = tmp_path / "blob"
    path.write_bytes(data)
    got = serve_once(runner, path, 1000, len(data) - 2000, client_delay=0.3)
    assert got == b"HEAD" + data[1000:-1000]


@pytest.mark.parametrize("runner", sorted(RUNNERS))
def test_a_client_that_leaves_is_a_connection_error(runner: str, tmp_path: Path) -> None:
    path = tmp_path / "blob"
    path.write_bytes(os.urandom(32 * 1024 * 1024))
    outcome: list[BaseException] = []

    async def scenario() -> None:
        done = asyncio.get_running_loop().create_future()

        async def on_client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            fd = os.open(path, os.O_RDONLY)
            try:
                await zerocopy.sendfile(writer.transport, fd, 0, path.stat().st_size)
            except BaseException as exc:
                outcome.append(exc)
            finally:
                os.close(fd)
                writer.close()
                done.set_result(None)

        server = await asyncio.start_server(on_client, "127.0.0.1", 0)
        try:
            port = server.sockets[0].getsockname()[1]
            client = socket.create_connection(("127.0.0.1", port))
            linger_zero = struct.pack("ii", 1, 0)
            client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, linger_zero)
            await asyncio.sleep(0.2)  # the send is under way and waiting: the socket is full
            client.close()  # with linger 0: a reset
            await asyncio.wait_for(done, 10)
        finally:
            server.close()
            await server.wait_closed()

    RUNNERS[runner](scenario())
    assert len(outcome) == 1
    assert isinstance(outcome[0], ConnectionError)


async def test_a_transport_without_a_socket_is_not_implemented(tmp_path: Path) -> None:
    read_end, write_end = os.pipe()
    loop = asyncio.get_running_loop()
    with os.fdopen(write_end, "wb", buffering=0) as pipe:
        transport, _ = await loop.connect_write_pipe(asyncio.Protocol, pipe)
        try:
            with pytest.raises(NotImplementedError):
                await zerocopy.sendfile(transport, read_end, 0, 10)
        finally:
            transport.close()
            os.close(read_end)


@pytest.mark.parametrize("runner", sorted(RUNNERS))
def test_a_tls_transport_is_not_implemented(runner: str, tmp_path: Path) -> None:
    # A TLS transport reports the TCP socket under it: bytes sent there would bypass the
    # encryption (and corrupt the TLS stream). The caller must fall back to read + write.
    path = tmp_path / "blob"
    path.write_bytes(b"plaintext never goes on a TLS connection")
    ca = trustme.CA()
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(server_context)
    client_context = ssl.create_default_context()
    ca.configure_trust(client_context)
    outcome: list[BaseException | None] = []

    async def scenario() -> None:
        done = asyncio.get_running_loop().create_future()

        async def on_client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            fd = os.open(path, os.O_RDONLY)
            try:
                await zerocopy.sendfile(writer.transport, fd, 0, path.stat().st_size)
                outcome.append(None)
            except BaseException as exc:
                outcome.append(exc)
            finally:
                os.close(fd)
                writer.close()
                done.set_result(None)

        server = await asyncio.start_server(on_client, "127.0.0.1", 0, ssl=server_context)
        try:
            port = server.sockets[0].getsockname()[1]
            _, writer = await asyncio.open_connection("127.0.0.1", port, ssl=client_context)
            await asyncio.wait_for(done, 10)
            writer.close()
        finally:
            server.close()
            await server.wait_closed()

    RUNNERS[runner](scenario())
    assert len(outcome) == 1
    assert isinstance(outcome[0], NotImplementedError)
