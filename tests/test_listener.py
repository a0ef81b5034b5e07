"""``connections.Listener`` over TLS (the peer listener's case): a client that never
finishes its handshake is cut at the header deadline and gives its ``max_connections``
slot back, although asyncio never tells the protocol that such a connection existed."""

from __future__ import annotations

import asyncio
import contextlib
import ssl

import aiohttp
import trustme
from aiohttp import web

from cachesvc.server.connections import Answers, Listener
from tests.polling import eventually


async def _hello(_: web.BaseRequest) -> web.Response:
    return web.Response(text="hello")


async def test_unfinished_tls_handshakes_are_cut_and_give_their_slots_back() -> None:
    ca = trustme.CA()
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(server_context)
    client_context = ssl.create_default_context()
    ca.configure_trust(client_context)
    answers = Answers()
    listener = Listener(
        web.Server(lambda request: answers.middleware(request, _hello)),
        "peer",
        max_connections=2,
        header_timeout=0.5,
        idle_timeout=60.0,
        answers=answers,
    )
    host, port = await listener.start("127.0.0.1", 0, server_context)
    try:
        silent = [await asyncio.open_connection(host, port) for _ in range(2)]
        try:
            assert await eventually(lambda: listener.open == 2)
            for reader, _ in silent:  # no ClientHello: the server ends it
                async with asyncio.timeout(8):
                    assert await reader.read() == b""
            assert await eventually(lambda: listener.open == 0), listener.open
        finally:
            for _, writer in silent:
                writer.close()
                with contextlib.suppress(ConnectionError):
                    await writer.wait_closed()
        connector = aiohttp.TCPConnector(ssl=client_context)
        async with (
            aiohttp.ClientSession(connector=connector) as http,
            http.get(f"https://{host}:{port}/") as resp,
        ):
            assert (resp.status, await resp.text()) == (200, "hello")
    finally:
        listener.close()
