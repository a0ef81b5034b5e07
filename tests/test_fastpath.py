"""Held manifests answered by ``cachesvc.server.fastpath`` from the connection's protocol.

The fast path must be invisible: the same bytes, access line and metrics as aiohttp's
handler, answers in request order on a connection aiohttp is still answering, the idle
deadline kept, and anything it does not understand left to aiohttp unchanged.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from contextlib import AbstractAsyncContextManager

import aiohttp
import pytest

from cachesvc.app import Daemon
from cachesvc.server.fastpath import parse_head
from tests.clock import AdvancingClock
from tests.conftest import StartDaemon, blob_url
from tests.fakes.registry import FakeRegistry
from tests.polling import eventually
from tests.rawclient import connection, read_response

DIGEST = "sha256:" + "ab" * 32


@pytest.mark.parametrize(
    ("head", "parsed"),
    [
        (f"GET /v2/team/app/manifests/{DIGEST} HTTP/1.1\r\nHost: x\r\n\r\n",
         ("GET", f"/v2/team/app/manifests/{DIGEST}", None, [])),
        (f"HEAD /v2/a/manifests/{DIGEST}?ns=reg.example:5000 HTTP/1.1\r\n"
         "Accept: a/b, c/d;q=0.5\r\nConnection: keep-alive\r\nUser-Agent: containerd/2.0\r\n\r\n",
         ("HEAD", f"/v2/a/manifests/{DIGEST}", "reg.example:5000", ["a/b, c/d;q=0.5"])),
        (f"GET /v2/a/manifests/{DIGEST}?ns=[::1]:5000 HTTP/1.1\r\n\r\n",
         ("GET", f"/v2/a/manifests/{DIGEST}", "[::1]:5000", [])),
        ("GET /v2/a/manifests/v1.2 HTTP/1.1\r\nAccept: x/y\r\nAccept:  z/w \r\n\r\n",
         ("GET", "/v2/a/manifests/v1.2", None, ["x/y", "z/w"])),
    ],
)  # fmt: skip
def test_plain_manifest_heads_are_taken(
    head: str, parsed: tuple[str, str, str | None, list[str]]
) -> None:
    assert parse_head(head.encode()) == parsed


@pytest.mark.parametrize(
    "head",
    [
        f"POST /v2/a/manifests/{DIGEST} HTTP/1.1\r\n\r\n",
        f"GET /v2/a/manifests/{DIGEST} HTTP/1.0\r\n\r\n",  # no keep-alive by default
        f"GET /v2/a%2Fb/manifests/{DIGEST} HTTP/1.1\r\n\r\n",  # percent-encoding
        f"GET /v2/a/../b/manifests/{DIGEST} HTTP/1.1\r\n\r\n",  # dot segments
        f"GET /v2//a/manifests/{DIGEST} HTTP/1.1\r\n\r\n",
        f"GET /v2/a/manifests/{DIGEST}?ns=r&n=1 HTTP/1.1\r\n\r\n",  # another parameter
        f"GET /v2/a/manifests/{DIGEST}?x=r HTTP/1.1\r\n\r\n",
        f"GET /v2/a/manifests/{DIGEST} HTTP/1.1\r\nConnection: close\r\n\r\n",
        f"GET /v2/a/manifests/{DIGEST} HTTP/1.1\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n",
        f"GET /v2/a/manifests/{DIGEST} HTTP/1.1\r\nExpect: 100-continue\r\n\r\n",
        f"GET /v2/a/manifests/{DIGEST} HTTP/1.1\r\nContent-Length: 0\r\n\r\n",
        f"GET /v2/a/manifests/{DIGEST} HTTP/1.1\r\nHost : x\r\n\r\n",  # space before colon
        f"GET /v2/a/manifests/{DIGEST} HTTP/1.1\r\nX-A: 1\r\n folded\r\n\r\n",  # obs-fold
        f"GET /v2/a/manifests/{DIGEST} HTTP/1.1\r\nX-A: caf\xe9\r\n\r\n",  # not ASCII
        f"GET /v2/a/manifests/{DIGEST} HTTP/1.1\r\nX-A: a\x00b\r\n\r\n",
        f"GET /v2/a/manifests/{DIGEST} HTTP/1.1\r\nno colon\r\n\r\n",
        f"GET  /v2/a/manifests/{DIGEST} HTTP/1.1\r\n\r\n",
        f"GET http://x/v2/a/manifests/{DIGEST} HTTP/1.1\r\n\r\n",  # absolute form
        "GET /v2/ HTTP/1.1\r\n\r\n",
    ],
)
def test_anything_else_is_left_to_aiohttp(head: str) -> None:
    assert parse_head(head.encode("latin-1")) is None


def raw(
    daemon: Daemon,
) -> AbstractAsyncContextManager[tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
    """A raw connection to ``daemon``'s mirror listener."""
    assert daemon.mirror_address is not None
    return connection(daemon.mirror_address)


ACCEPT = "application/vnd.oci.image.manifest.v1+json, application/vnd.oci.image.index.v1+json"


async def held_manifest(
    mirror: Daemon, fake: FakeRegistry, http: aiohttp.ClientSession, *, by: str = "digest"
) -> str:
    """The path of a manifest the mirror now holds in memory, by digest or by tag (then
    confirmed within tag_ttl for ``ACCEPT``)."""
    digest, _ = fake.add_image("team/app", "v1", [os.urandom(1000)])
    path = f"/v2/team/app/manifests/{digest if by == 'digest' else 'v1'}?ns=fake.test"
    async with http.get(f"{mirror.mirror_url}{path}", headers={"Accept": ACCEPT}) as resp:
        assert resp.status == 200
    return path


def _hits(mirror: Daemon) -> float:
    value = mirror.metrics.registry.get_sample_value(
        "cachesvc_requests_total", {"kind": "manifest", "result": "hit", "registry": "fake.test"}
    )
    return value or 0.0


@pytest.mark.parametrize("by", ["digest", "tag"])
@pytest.mark.parametrize("method", ["GET", "HEAD"])
async def test_the_fast_answer_is_the_handlers_answer(
    method: str,
    by: str,
    fake: FakeRegistry,
    mirror: Daemon,
    http: aiohttp.ClientSession,
    caplog: pytest.LogCaptureFixture,
) -> None:
    path = await held_manifest(mirror, fake, http, by=by)
    request = f"{method} {path} HTTP/1.1\r\nHost: x\r\nAccept: {ACCEPT}\r\n\r\n".encode()
    upstream_before = fake.count("GET", "/manifests/") + fake.count("HEAD", "/manifests/")
    lines: list[dict[str, object]] = []
    with caplog.at_level(logging.INFO, logger="cachesvc.access"):
        async with raw(mirror) as (reader, writer):
            before = _hits(mirror)
            writer.write(request)  # one whole head: the fast path's
            fast = await read_response(reader, head=method == "HEAD")
            assert _hits(mirror) == before + 1
            # The same head in two reads goes through aiohttp's handler.
            writer.write(request[:20])
            await writer.drain()
            await asyncio.sleep(0.1)
            writer.write(request[20:])
            slow = await read_response(reader, head=method == "HEAD")
            assert _hits(mirror) == before + 2
        assert await eventually(
            lambda: len([r for r in caplog.records if r.name == "cachesvc.access"]) >= 2
        )
        for record in caplog.records:
            if record.name == "cachesvc.access":
                fields = dict(getattr(record, "fields", {}))
                fields.pop("duration_ms")
                lines.append(fields)
    assert fast == slow
    assert fast[0].startswith(b"HTTP/1.1 200 OK\r\n")
    upstream_after = fake.count("GET", "/manifests/") + fake.count("HEAD", "/manifests/")
    assert upstream_after == upstream_before  # both hits: within tag_ttl, held
    if method == "GET":
        assert fast[1]
        assert fast[1][:1] == b"{"
    assert lines[-1] == lines[-2], lines[-2:]
    assert lines[-1]["cache"] == "hit"
    assert lines[-1]["status"] == 200


async def test_a_fast_answer_waits_for_the_answers_before_it_on_its_connection(
    fake: FakeRegistry, mirror: Daemon, http: aiohttp.ClientSession
) -> None:
    path = await held_manifest(mirror, fake, http)
    data = os.urandom(256 * 1024)
    digest = fake.add_blob(data)
    fake.faults.hold_after = 100 * 1024  # the blob's answer is under way, then waits
    blob = blob_url(mirror, digest).removeprefix(mirror.mirror_url)
    async with raw(mirror) as (reader, writer):
        writer.write(f"GET {blob} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        await writer.drain()
        async with asyncio.timeout(10):
            await reader.readuntil(b"\r\n\r\n")  # aiohttp started answering the blob
        writer.write(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())  # whole, separate
        await writer.drain()
        await asyncio.sleep(0.3)
        fake.faults.resume.set()
        body = await reader.readexactly(len(data))
        assert body == data, "the manifest's answer was written into the blob's"
        manifest_head, manifest = await read_response(reader)
    assert manifest_head.startswith(b"HTTP/1.1 200 OK")
    assert b"Docker-Content-Digest: sha256:" in manifest_head
    assert manifest[:1] == b"{"


FAST_IDLE = {"connect": "2s", "first_byte": "5s", "stall": "2s", "client_idle": "1s"}


async def test_a_connection_kept_busy_by_fast_answers_is_not_idle(
    fake: FakeRegistry, start_daemon: StartDaemon, http: aiohttp.ClientSession
) -> None:
    async with start_daemon({"fake.test": [fake.url]}, timeouts=FAST_IDLE) as mirror:
        path = await held_manifest(mirror, fake, http)
        request = f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode()
        async with raw(mirror) as (reader, writer):
            before = _hits(mirror)
            # 2.5 s of fast answers 0.25 s apart: longer than client_idle (1 s), never idle so
            # long (aiohttp, which sees none of them, would have closed it as idle)
            for _ in range(10):
                writer.write(request)
                head, _ = await read_response(reader)
                assert head.startswith(b"HTTP/1.1 200")
                await asyncio.sleep(0.25)
            assert _hits(mirror) == before + 10
            async with asyncio.timeout(5):  # now idle: closed after client_idle
                assert await reader.read() == b""


async def test_a_client_outside_clients_allow_is_refused_by_the_handler(
    fake: FakeRegistry, start_daemon: StartDaemon, http: aiohttp.ClientSession
) -> None:
    allow = {"allow": ["127.0.0.1/32"]}
    async with start_daemon({"fake.test": [fake.url]}, clients=allow) as mirror:
        path = await held_manifest(mirror, fake, http)  # held, fetched from 127.0.0.1
        assert mirror.mirror_address is not None
        reader, writer = await asyncio.open_connection(
            *mirror.mirror_address, local_addr=("127.0.0.9", 0)
        )
        try:
            writer.write(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
            head, body = await read_response(reader)
        finally:
            writer.close()
    assert head.startswith(b"HTTP/1.1 403"), head
    assert b"clients.allow" in body


async def test_a_client_that_does_not_read_stops_getting_fast_answers(
    fake: FakeRegistry, mirror: Daemon, http: aiohttp.ClientSession
) -> None:
    # A client that sends heads one by one and reads nothing: once the transport's buffer
    # is full (pause_writing), requests go to aiohttp, which waits for the client. So the
    # daemon's memory for it stays bounded; when it reads, every answer comes, in order.
    path = await held_manifest(mirror, fake, http)
    request = f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode()
    assert mirror.mirror_address is not None
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, mirror.mirror_address)
    reader, writer = await asyncio.open_connection(sock=sock)
    try:
        before = _hits(mirror)
        sent = 0
        while sent < 20000:  # until the answers stop coming (bounded: fails if never)
            for _ in range(250):
                writer.write(request)
                await writer.drain()
                await asyncio.sleep(0.0002)  # one head per read on the server's side
            sent += 250
            await asyncio.sleep(0.05)
            if _hits(mirror) - before < sent - 100:
                break
        await asyncio.sleep(0.2)
        answered_unread = _hits(mirror) - before
        assert answered_unread < sent - 100, (answered_unread, sent)
        for _ in range(sent):
            head, body = await read_response(reader)
            assert head.startswith(b"HTTP/1.1 200")
            assert body[:1] == b"{"
        assert _hits(mirror) - before == sent
    finally:
        writer.close()


async def test_blank_lines_between_requests_do_not_keep_a_connection_open(
    fake: FakeRegistry, start_daemon: StartDaemon, http: aiohttp.ClientSession
) -> None:
    # Empty lines before a request line are allowed (RFC 9112 2.2) but are no request:
    # a client that sends one now and then is still idle.
    async with start_daemon({"fake.test": [fake.url]}, timeouts=FAST_IDLE) as mirror:
        path = await held_manifest(mirror, fake, http)
        async with raw(mirror) as (reader, writer):
            writer.write(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
            head, _ = await read_response(reader)
            assert head.startswith(b"HTTP/1.1 200")

            async def blank_lines() -> None:
                with contextlib.suppress(ConnectionError):
                    while True:
                        writer.write(b"\r\n")
                        await writer.drain()
                        await asyncio.sleep(0.3)

            keep = asyncio.create_task(blank_lines())
            try:
                async with asyncio.timeout(5):
                    assert await reader.read() == b""
            finally:
                keep.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await keep


def _manifest_requests(fake: FakeRegistry) -> int:
    return fake.count("GET", "/manifests/") + fake.count("HEAD", "/manifests/")


async def test_a_tag_is_answered_fast_only_for_its_accept_set_and_within_tag_ttl(
    fake: FakeRegistry, mirror: Daemon, http: aiohttp.ClientSession, clock: AdvancingClock
) -> None:
    path = await held_manifest(mirror, fake, http, by="tag")  # confirmed for ACCEPT
    ttl = mirror.config.registries["fake.test"].tag_ttl
    async with raw(mirror) as (reader, writer):

        async def get(accept: str) -> bytes:
            writer.write(f"GET {path} HTTP/1.1\r\nHost: x\r\nAccept: {accept}\r\n\r\n".encode())
            head, _ = await read_response(reader)
            return head

        before = _manifest_requests(fake)
        assert (await get(ACCEPT)).startswith(b"HTTP/1.1 200")
        assert _manifest_requests(fake) == before  # held, fresh: no upstream request
        # Another Accept set is another cache key: the handler asks upstream.
        await get("application/vnd.docker.distribution.manifest.v2+json")
        assert _manifest_requests(fake) == before + 1
        clock.advance(ttl + 1)  # past tag_ttl: revalidated, not answered from memory
        assert (await get(ACCEPT)).startswith(b"HTTP/1.1 200")
        assert _manifest_requests(fake) == before + 2
