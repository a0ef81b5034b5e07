"""The peer client reads a manifest from another member as the upstream client reads a small
body (cachesvc.cluster.peerclient): bounded in bytes, and with a total deadline of the connect
time plus ``timeouts.first_byte`` from the request, so a member that trickles (or floods) a
manifest is a failed peer (the next source is asked), never a pull held for minutes."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from cachesvc.cluster.peerclient import PeerClient, PeerFailed
from cachesvc.config import Timeouts
from cachesvc.config.peeraddress import PeerAddress
from cachesvc.oci import MAX_MANIFEST_BYTES
from cachesvc.tokenfile import TokenFile
from tests.fakes.registry import serve

MANIFEST = b'{"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json"}'


async def trickle(request: web.Request) -> web.StreamResponse:
    """A manifest one byte every 0.2 s: never a stall, done only after ~16 s."""
    response = web.StreamResponse(headers={"Content-Length": str(len(MANIFEST))})
    await response.prepare(request)
    for byte in MANIFEST:
        if request.transport is None or request.transport.is_closing():
            break  # the client gave up
        await response.write(bytes([byte]))
        await asyncio.sleep(0.2)
    return response


async def flood(request: web.Request) -> web.StreamResponse:
    response = web.StreamResponse()  # chunked: no length to refuse it by
    await response.prepare(request)
    while True:
        await response.write(b" " * 65536)


async def whole(request: web.Request) -> web.Response:
    return web.Response(body=MANIFEST)


@pytest.fixture
def tokens(tmp_path: Path) -> TokenFile:
    path = tmp_path / "cluster-token"
    path.write_text("peer-token\n")
    return TokenFile.load(path, config_key="cluster.token_file", clock=time.monotonic)


async def test_a_trickled_or_endless_manifest_from_a_peer_fails_that_peer(
    tokens: TokenFile,
) -> None:
    app = web.Application()
    app.router.add_get("/v2/slow/manifests/v1", trickle)
    app.router.add_get("/v2/flood/manifests/v1", flood)
    app.router.add_get("/v2/fine/manifests/v1", whole)
    async with serve(app) as url, aiohttp.ClientSession() as session:
        host, port = url.removeprefix("http://").rsplit(":", 1)
        peer = PeerAddress.of(host, int(port))
        client = PeerClient(
            session,
            tokens,
            PeerAddress.of("127.0.0.1", 1),
            Timeouts(connect=1.0, first_byte=1.5, stall=5.0),
            is_member=lambda _: True,
        )
        answer = await client.manifest(peer, "registry.test", "fine", "v1", "*/*")
        assert answer.body == MANIFEST
        try:
            async with asyncio.timeout(10):  # the trickle alone would take ~16 s
                with pytest.raises(PeerFailed, match=r"within timeouts\.first_byte"):
                    await client.manifest(peer, "registry.test", "slow", "v1", "*/*")
        except TimeoutError:
            pytest.fail("a peer trickling a manifest held the request past its deadline")
        with pytest.raises(PeerFailed, match=f"over {MAX_MANIFEST_BYTES} bytes"):
            await client.manifest(peer, "registry.test", "flood", "v1", "*/*")
