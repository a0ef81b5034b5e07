"""The hit send path: the lease held for exactly the answer, the file sender on a plain
socket (zero-copy) and on TLS (read + write), a client that resets mid-send, and the
digest as the blob's validator."""

from __future__ import annotations

import asyncio
import os
import socket
import ssl
import struct
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from yarl import URL

from cachesvc.app import Daemon
from cachesvc.errors import BlobUnknown
from cachesvc.mirror.blobs import BlobAnswer, CachedBlob
from cachesvc.oci import Digest
from cachesvc.server import blobsend
from cachesvc.store.lease import Leases
from tests.conftest import blob_url
from tests.fakes.registry import FakeRegistry
from tests.polling import eventually
from tests.tls_upstream import server_context

MIB = 1024 * 1024


# -- the lease ------------------------------------------------------------------------


def test_an_answer_releases_its_lease_however_its_block_ends(tmp_path: Path) -> None:
    leases = Leases()
    digest = Digest.of(b"x", "sha256")
    with BlobAnswer(CachedBlob(tmp_path / "x", 1, leases.take(digest)), "hit"):
        assert leases.in_use(digest)
    assert not leases.in_use(digest)
    blob = CachedBlob(tmp_path / "x", 1, leases.take(digest))
    other = leases.take(digest)  # another reader of the same blob
    with pytest.raises(RuntimeError), BlobAnswer(blob, "hit"):
        assert len(leases) == 2
        raise RuntimeError("the response failed before it was prepared")
    assert len(leases) == 1
    blob.release()  # idempotent: a second release leaves the other reader's lease alone
    assert leases.in_use(digest)
    other.release()
    assert len(leases) == 0


# -- the sender, over real sockets ----------------------------------------------------


@dataclass
class Sent:
    """What the sending side saw: the bytes counted and how ``send_file`` ended."""

    counted: int = 0
    outcome: list[BaseException | None] = field(default_factory=list)
    done: asyncio.Event = field(default_factory=asyncio.Event)


@asynccontextmanager
async def file_server(
    path: Path, size: int, span: tuple[int, int] | None, context: ssl.SSLContext | None
) -> AsyncIterator[tuple[str, Sent]]:
    """A real aiohttp server whose only route sends ``path`` (``span`` of its ``size``
    bytes) with blobsend."""
    sent = Sent()

    async def handler(request: web.Request) -> web.StreamResponse:
        response = blobsend.span_response({"Content-Type": "application/octet-stream"}, size, span)

        def counted(n: int) -> None:
            sent.counted += n

        try:
            await blobsend.send_file(request, response, path, span or (0, size), counted)
            sent.outcome.append(None)
        except BaseException as exc:
            sent.outcome.append(exc)
            if not isinstance(exc, ConnectionError):
                raise
        finally:
            sent.done.set()
        return response

    app = web.Application()
    app.router.add_get("/blob", handler)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=1)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=context)
    await site.start()
    scheme = "https" if context is not None else "http"
    try:
        yield f"{scheme}://127.0.0.1:{runner.addresses[0][1]}/blob", sent
    finally:
        await runner.cleanup()


def contexts(pki: dict[str, Any], tls: bool) -> tuple[ssl.SSLContext | None, ssl.SSLContext | None]:
    if not tls:
        return None, None
    return server_context(pki, mutual=False), ssl.create_default_context(cafile=str(pki["ca_file"]))


@pytest.mark.parametrize("tls", [False, True], ids=["plain", "tls"])
@pytest.mark.parametrize("span", [None, (1000, 9 * MIB + 7)], ids=["whole", "range"])
async def test_the_sender_sends_exact_bytes_zero_copy_or_encrypted(
    tmp_path: Path, pki: dict[str, Any], tls: bool, span: tuple[int, int] | None
) -> None:
    # On TLS zerocopy refuses (bytes sent on the socket under TLS would skip the
    # encryption): the right bytes arriving over TLS are the read + write fallback's.
    data = os.urandom(12 * MIB + 3)
    path = tmp_path / "blob"
    path.write_bytes(data)
    server_ssl, client_ssl = contexts(pki, tls)
    async with (
        file_server(path, len(data), span, server_ssl) as (url, sent),
        aiohttp.ClientSession() as http,
        http.get(url, ssl=client_ssl if client_ssl is not None else True) as resp,
    ):
        body = await resp.read()
    start, end = span or (0, len(data))
    assert resp.status == (206 if span else 200)
    assert body == data[start:end]
    assert int(resp.headers["Content-Length"]) == end - start
    if span:
        assert resp.headers["Content-Range"] == f"bytes {start}-{end - 1}/{len(data)}"
    await asyncio.wait_for(sent.done.wait(), 10)
    assert sent.outcome == [None]
    assert sent.counted == end - start


@pytest.mark.parametrize("tls", [False, True], ids=["plain", "tls"])
async def test_a_client_that_resets_mid_send_ends_it_with_a_connection_error(
    tmp_path: Path, pki: dict[str, Any], tls: bool
) -> None:
    data = os.urandom(64 * MIB)  # far more than loopback socket buffers hold
    path = tmp_path / "blob"
    path.write_bytes(data)
    server_ssl, client_ssl = contexts(pki, tls)
    async with file_server(path, len(data), None, server_ssl) as (url, sent):
        target = URL(url)
        reader, writer = await asyncio.open_connection(
            target.host, target.port, ssl=client_ssl, server_hostname="127.0.0.1" if tls else None
        )
        writer.write(f"GET /blob HTTP/1.1\r\nHost: {target.host}\r\n\r\n".encode())
        await reader.readexactly(1 * MIB)  # headers and the first bytes: the send is under way
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        writer.transport.abort()  # with linger 0: a reset, no TLS close_notify
        await asyncio.wait_for(sent.done.wait(), 30)
    (outcome,) = sent.outcome
    assert isinstance(outcome, ConnectionError)
    assert 0 < sent.counted < len(data)


async def test_a_file_gone_behind_the_index_is_blob_unknown_before_the_status_line(
    tmp_path: Path,
) -> None:
    path = tmp_path / "blob"
    path.write_bytes(b"x" * 10)
    async with file_server(path, 10, None, None) as (url, sent), aiohttp.ClientSession() as http:
        path.unlink()
        async with http.get(url) as resp:
            assert resp.status == 500  # this bare app maps nothing; the daemon's middleware: 404
        await asyncio.wait_for(sent.done.wait(), 10)
    (outcome,) = sent.outcome
    assert isinstance(outcome, BlobUnknown)
    assert sent.counted == 0


# -- through the daemon ---------------------------------------------------------------


async def hit(fake: FakeRegistry, mirror: Daemon, http: aiohttp.ClientSession) -> tuple[str, bytes]:
    """A blob fetched once (the fill) and committed, so the next GET is a hit."""
    data = os.urandom(100_000)
    digest = fake.add_blob(data)
    async with http.get(blob_url(mirror, digest)) as resp:
        assert resp.headers["ETag"] == f'"{digest}"'
        assert await resp.read() == data
    assert await eventually(lambda: mirror.parts.store.size(Digest.parse(digest)) is not None)
    return digest, data


async def test_answers_that_never_send_the_file_release_the_lease(
    fake: FakeRegistry, mirror: Daemon, http: aiohttp.ClientSession
) -> None:
    digest, data = await hit(fake, mirror, http)
    url = blob_url(mirror, digest)
    leases = mirror.parts.leases
    async with http.get(url, headers={"Range": f"bytes={len(data)}-"}) as resp:
        assert resp.status == 416
    assert len(leases) == 0
    async with http.get(url, headers={"If-None-Match": f'W/"{digest}"'}) as resp:
        assert resp.status == 304
        assert await resp.read() == b""
        assert resp.headers["ETag"] == f'"{digest}"'
    assert len(leases) == 0
    async with http.get(url, headers={"If-Match": '"sha256:other"'}) as resp:
        assert resp.status == 412
    assert len(leases) == 0
    async with http.get(url) as resp:
        assert await resp.read() == data  # and the blob is still served whole
    assert len(leases) == 0
    assert fake.count("GET", "/blobs/") == 1


async def test_the_digest_is_the_validator_of_hits_heads_and_ranges(
    fake: FakeRegistry, mirror: Daemon, http: aiohttp.ClientSession
) -> None:
    digest, data = await hit(fake, mirror, http)
    url = blob_url(mirror, digest)
    etag = f'"{digest}"'
    async with http.head(url, headers={"If-None-Match": etag}) as resp:
        assert resp.status == 304
    async with http.head(url) as resp:
        assert (resp.status, resp.headers["ETag"]) == (200, etag)
        assert resp.headers["Content-Length"] == str(len(data))
    ranged = {"Range": "bytes=10-19"}
    async with http.get(url, headers={**ranged, "If-Range": etag}) as resp:
        assert (resp.status, await resp.read()) == (206, data[10:20])
    async with http.get(url, headers={**ranged, "If-Range": '"sha256:older"'}) as resp:
        assert (resp.status, await resp.read()) == (200, data)  # changed: all of it
    async with http.get(url, headers={"If-Match": etag, "If-None-Match": '"other"'}) as resp:
        assert (resp.status, await resp.read()) == (200, data)
