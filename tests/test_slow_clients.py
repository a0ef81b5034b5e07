"""Issue 11, hostile clients: slowloris headers, idle keep-alive connections and connection
floods on both listeners (mirror and admin); and the access log's byte count for error
answers. Config keys the tests assume (new): ``timeouts.client_header``,
``timeouts.client_idle`` and ``max_connections`` (per listener)."""

from __future__ import annotations

import asyncio
import contextlib
import logging

import aiohttp
import pytest

from cachesvc.app import Daemon
from tests.conftest import StartDaemon
from tests.fakes.registry import FakeRegistry
from tests.polling import eventually
from tests.rawclient import connection, read_response

FAST = {
    "connect": "2s",
    "first_byte": "5s",
    "stall": "2s",
    "client_header": "1s",
    "client_idle": "1s",
}


def _address(daemon: Daemon, listener: str) -> tuple[str, int]:
    address = daemon.mirror_address if listener == "mirror" else daemon.admin_address
    assert address is not None
    return address[0], address[1]


async def _closed_by_server(reader: asyncio.StreamReader, guard: float = 8.0) -> bytes:
    """Everything the server sends until it closes; fails the test if it never does."""
    try:
        async with asyncio.timeout(guard):
            return await reader.read()
    except TimeoutError:
        pytest.fail(f"the server kept the connection open for {guard:g} s")


async def _dribble(writer: asyncio.StreamWriter) -> None:
    """A header line one byte every 0.2 s, never finished (slowloris)."""
    writer.write(b"GET /v2/ HTTP/1.1\r\nHost: x\r\nX-Slow: ")
    with contextlib.suppress(ConnectionError):
        while True:
            await asyncio.sleep(0.2)
            writer.write(b"a")
            await writer.drain()


async def _answer_to_dribble(address: tuple[str, int]) -> bytes:
    """What the server sends a client that dribbles one header line forever, until it closes."""
    async with connection(address) as (reader, writer):
        slow = asyncio.create_task(_dribble(writer))
        try:
            return await _closed_by_server(reader)
        finally:
            slow.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await slow


@pytest.mark.parametrize("listener", ["mirror", "admin"])
async def test_headers_sent_slowly_are_cut_at_the_header_timeout(
    listener: str, fake: FakeRegistry, start_daemon: StartDaemon
) -> None:
    async with start_daemon({"fake.test": [fake.url]}, timeouts=FAST) as d:
        answer = await _answer_to_dribble(_address(d, listener))
    assert b"200 OK" not in answer


@pytest.mark.parametrize("listener", ["mirror", "admin"])
async def test_an_idle_keep_alive_connection_is_closed_at_the_idle_timeout(
    listener: str, fake: FakeRegistry, start_daemon: StartDaemon
) -> None:
    path = b"/v2/" if listener == "mirror" else b"/healthz"
    async with (
        start_daemon({"fake.test": [fake.url]}, timeouts=FAST) as d,
        connection(_address(d, listener)) as (reader, writer),
    ):
        writer.write(b"GET " + path + b" HTTP/1.1\r\nHost: x\r\n\r\n")
        head = await reader.readuntil(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200")
        await _closed_by_server(reader)


async def test_connections_beyond_max_connections_are_refused_and_logged(
    fake: FakeRegistry, start_daemon: StartDaemon, caplog: pytest.LogCaptureFixture
) -> None:
    timeouts = {**FAST, "client_header": "60s", "client_idle": "60s"}
    async with start_daemon({"fake.test": [fake.url]}, timeouts=timeouts, max_connections=5) as d:
        address = _address(d, "mirror")
        held = [await asyncio.open_connection(*address) for _ in range(5)]
        try:
            with caplog.at_level(logging.WARNING):
                async with connection(address) as (reader, writer):
                    writer.write(b"GET /v2/ HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                    answer = await _closed_by_server(reader)
            assert not answer.startswith(b"HTTP/1.1 200"), "a sixth connection was served"
            assert any("max_connections" in r.getMessage() for r in caplog.records)
        finally:
            for _, w in held:
                w.close()
        # Capacity is back once they are gone (the server sees the closes a moment later).
        assert await _served_again(f"{d.mirror_url}/v2/")


async def _served_again(url: str, attempts: int = 50) -> bool:
    """A fresh connection gets 200 within ``attempts`` tries, 0.1 s apart."""
    async with aiohttp.ClientSession() as http:
        for _ in range(attempts):
            async with http.get(url, headers={"Connection": "close"}) as resp:
                if resp.status == 200:
                    return True
            await asyncio.sleep(0.1)
    return False


async def test_the_access_log_counts_the_bytes_of_an_error_body(
    mirror: Daemon, http: aiohttp.ClientSession, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="cachesvc.access"):
        url = f"{mirror.mirror_url}/v2/team/app/manifests/sha256:totallywrong?ns=fake.test"
        async with http.get(url) as resp:
            body = await resp.read()
        assert resp.status == 400
        assert await eventually(lambda: any(r.name == "cachesvc.access" for r in caplog.records))
    (line,) = [getattr(r, "fields", {}) for r in caplog.records if r.name == "cachesvc.access"]
    assert body
    assert line["bytes"] == len(body), line


# The header deadline is cachesvc's own, not aiohttp's keep-alive clock: with client_idle
# long, only client_header can cut these (and a body is not a header block).
HEADER_ONLY = {**FAST, "client_idle": "60s"}


async def _dribble_bytes(writer: asyncio.StreamWriter, data: bytes, every: float = 0.1) -> None:
    for i in range(len(data)):
        writer.write(data[i : i + 1])
        await writer.drain()
        await asyncio.sleep(every)


@pytest.mark.parametrize("listener", ["mirror", "admin"])
async def test_a_slow_first_head_gets_408_from_the_header_deadline(
    listener: str, fake: FakeRegistry, start_daemon: StartDaemon
) -> None:
    async with start_daemon({"fake.test": [fake.url]}, timeouts=HEADER_ONLY) as d:
        answer = await _answer_to_dribble(_address(d, listener))
    assert answer.startswith(b"HTTP/1.1 408"), answer[:100]


@pytest.mark.parametrize("listener", ["mirror", "admin"])
async def test_a_slow_head_of_a_later_request_is_cut_too(
    listener: str, fake: FakeRegistry, start_daemon: StartDaemon
) -> None:
    """Kept alive after one complete request, the next head has its own deadline."""
    path = b"/v2/" if listener == "mirror" else b"/healthz"
    async with (
        start_daemon({"fake.test": [fake.url]}, timeouts=HEADER_ONLY) as d,
        connection(_address(d, listener)) as (reader, writer),
    ):
        writer.write(b"GET " + path + b" HTTP/1.1\r\nHost: x\r\n\r\n")
        head, _ = await read_response(reader)
        assert head.startswith(b"HTTP/1.1 200")
        slow = asyncio.create_task(_dribble(writer))
        try:
            answer = await _closed_by_server(reader)
        finally:
            slow.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await slow
    assert answer.startswith(b"HTTP/1.1 408"), answer[:100]


@pytest.mark.parametrize(
    ("framing", "body"),
    [
        (b"Content-Length: 24\r\n", b'{"images": [], "pin": 1}'),
        (b"Transfer-Encoding: chunked\r\n", b'5;x=y\r\n{"ima\r\n3\r\nges\r\n0\r\nX-T: 1\r\n\r\n'),
    ],
)
async def test_a_body_sent_slowly_is_not_a_slow_head(
    framing: bytes, body: bytes, fake: FakeRegistry, start_daemon: StartDaemon
) -> None:
    """A request body trickled past client_header is a body, not headers: the request is
    answered and the next request on the connection too (request framing is tracked)."""
    async with (
        start_daemon({"fake.test": [fake.url]}, timeouts=HEADER_ONLY) as d,
        connection(_address(d, "admin")) as (reader, writer),
    ):
        writer.write(b"POST /admin/v1/prewarm HTTP/1.1\r\nHost: x\r\n" + framing + b"\r\n")
        await _dribble_bytes(writer, body, every=1.5 / len(body))
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        answers = await _closed_by_server(reader)
    assert b"408" not in answers.split(b"\r\n", 1)[0], answers[:200]
    assert answers.count(b"HTTP/1.1 ") == 2, answers[-300:]
    assert b"HTTP/1.1 200" in answers, answers[-300:]
