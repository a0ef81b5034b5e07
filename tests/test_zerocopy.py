"""Zero-copy sends without ``loop.sendfile``: exact bytes on both loops, a slow reader
(the socket fills and the send waits), a client that leaves, and no socket at all."""

from __future__ import annotations

import asyncio
import os
import socket
import ssl
import struct
from collections.abc import Awaitable, Callable, Coroutine
from pathlib import Path
from typing import Any

import pytest
import uvloop

from cachesvc.server import zerocopy
from tests.tls_upstream import server_context

RUNNERS: dict[str, Callable[[Coroutine[Any, Any, None]], None]] = {
    "asyncio": asyncio.run,
    "uvloop": uvloop.run,
}

Client = Callable[[int, "asyncio.Future[None]"], Awaitable[None]]
"""Connects to the port and does its part; the future resolves once the send has ended."""


def send_to_one_client(
    runner: str,
    path: Path,
    client: Client,
    *,
    offset: int = 0,
    count: int | None = None,
    before: bytes = b"",
    server_ssl: ssl.SSLContext | None = None,
) -> BaseException | None:
    """Serve one ``client``: write ``before`` (as the headers are), then ``zerocopy.sendfile``
    ``count`` bytes of ``path`` from ``offset`` (the rest of it by default). Returns what
    the send raised, ``None`` when it returned."""
    outcome: list[BaseException | None] = []
    size = path.stat().st_size - offset if count is None else count

    async def scenario() -> None:
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()

        async def on_client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            fd = os.open(path, os.O_RDONLY)
            try:
                writer.write(before)
                await zerocopy.sendfile(writer.transport, fd, offset, size)
                outcome.append(None)
            except BaseException as exc:
                outcome.append(exc)
            finally:
                os.close(fd)
                writer.close()
                done.set_result(None)

        server = await asyncio.start_server(on_client, "127.0.0.1", 0, ssl=server_ssl)
        try:
            await client(server.sockets[0].getsockname()[1], done)
        finally:
            server.close()
            await server.wait_closed()

    RUNNERS[runner](scenario())
    assert len(outcome) == 1, outcome
    return outcome[0]


@pytest.mark.parametrize("runner", sorted(RUNNERS))
def test_the_bytes_after_what_was_written_before(runner: str, tmp_path: Path) -> None:
    data = os.urandom(24 * 1024 * 1024 + 123)
    path = tmp_path / "blob"
    path.write_bytes(data)
    received = bytearray()

    async def slow_reader(port: int, done: asyncio.Future[None]) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        await asyncio.sleep(0.3)  # the socket buffers fill: sendfile must wait
        async with asyncio.timeout(60):
            while chunk := await reader.read(1 << 20):
                received.extend(chunk)
            writer.close()
            await done

    outcome = send_to_one_client(
        runner, path, slow_reader, offset=1000, count=len(data) - 2000, before=b"HEAD"
    )
    assert outcome is None
    assert bytes(received) == b"HEAD" + data[1000:-1000]


@pytest.mark.parametrize("runner", sorted(RUNNERS))
def test_a_client_that_leaves_is_a_connection_error(runner: str, tmp_path: Path) -> None:
    path = tmp_path / "blob"
    path.write_bytes(os.urandom(32 * 1024 * 1024))

    async def leaver(port: int, done: asyncio.Future[None]) -> None:
        client = socket.create_connection(("127.0.0.1", port))
        client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        await asyncio.sleep(0.2)  # the send is under way and waiting: the socket is full
        client.close()  # with linger 0: a reset
        await asyncio.wait_for(done, 10)

    assert isinstance(send_to_one_client(runner, path, leaver), ConnectionError)


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
def test_a_tls_transport_is_not_implemented(
    runner: str, tmp_path: Path, pki: dict[str, Any]
) -> None:
    # A TLS transport reports the TCP socket under it: bytes sent there would bypass the
    # encryption (and corrupt the TLS stream). The caller must fall back to read + write.
    path = tmp_path / "blob"
    path.write_bytes(b"plaintext never goes on a TLS connection")
    client_context = ssl.create_default_context(cafile=str(pki["ca_file"]))

    async def tls_client(port: int, done: asyncio.Future[None]) -> None:
        _, writer = await asyncio.open_connection("127.0.0.1", port, ssl=client_context)
        await asyncio.wait_for(done, 10)
        writer.close()

    outcome = send_to_one_client(
        runner, path, tls_client, server_ssl=server_context(pki, mutual=False)
    )
    assert isinstance(outcome, NotImplementedError)
