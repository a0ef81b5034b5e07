"""Blob path against a fake upstream: hits, misses, coalescing, verification, faults."""

from __future__ import annotations

import asyncio
import ctypes
import hashlib
import logging
import mmap
import os
import socket
import struct
from pathlib import Path

import aiohttp
import pytest
from yarl import URL

from cachesvc.app import Daemon
from cachesvc.mirror.fill import MEMORY_TOTAL
from cachesvc.oci import Digest
from tests.conftest import StartDaemon, blob_url
from tests.fakes.registry import FakeRegistry
from tests.polling import eventually

MIB = 1024 * 1024


def stored(daemon: Daemon, digest: str) -> bool:
    return daemon.parts.store.size(Digest.parse(digest)) is not None


async def committed(daemon: Daemon, digest: str) -> bool:
    """Whether the blob reaches its final path: the commit (fsync + rename) runs just
    after the verified last bytes were released to clients."""
    return await eventually(lambda: stored(daemon, digest))


def temp_files(daemon: Daemon) -> list[str]:
    return os.listdir(daemon.parts.store.tmp_root)


async def test_miss_then_hit_serves_exact_bytes_and_asks_upstream_once(
    fake: FakeRegistry, mirror: Daemon, http: aiohttp.ClientSession
) -> None:
    data = os.urandom(300_000)
    digest = fake.add_blob(data)
    for _ in range(3):
        async with http.get(blob_url(mirror, digest)) as resp:
            assert resp.status == 200
            assert resp.headers["Docker-Content-Digest"] == digest
            assert resp.headers["Content-Length"] == str(len(data))
            assert await resp.read() == data
    assert fake.count("GET", "/blobs/") == 1
    assert await committed(mirror, digest)


async def test_twenty_concurrent_cold_requests_make_one_upstream_get(
    fake: FakeRegistry, mirror: Daemon, http: aiohttp.ClientSession
) -> None:
    data = os.urandom(8 * 1024 * 1024)
    digest = fake.add_blob(data)
    fake.faults.slow_chunk_delay = 0.002  # keep the fill running while all 20 join

    async def pull() -> tuple[int, str]:
        async with http.get(blob_url(mirror, digest)) as resp:
            return resp.status, hashlib.sha256(await resp.read()).hexdigest()

    results = await asyncio.gather(*(pull() for _ in range(20)))
    assert results == [(200, digest.split(":")[1])] * 20
    assert fake.count("GET", "/blobs/") == 1


async def test_followers_stream_before_the_fill_ends(
    fake: FakeRegistry, mirror: Daemon, http: aiohttp.ClientSession
) -> None:
    data = os.urandom(4 * 1024 * 1024)
    digest = fake.add_blob(data)
    fake.faults.slow_chunk_delay = 0.02  # 64 chunks: about 1.3 s upstream
    async with http.get(blob_url(mirror, digest)) as resp:
        first = await resp.content.readexactly(64 * 1024)
        fill = mirror.parts.fills.get(Digest.parse(digest))
        assert fill is not None, "bytes arrived only after the fill ended"
        assert not fill.finished, "bytes arrived only after the fill ended"
        rest = await resp.read()
    assert first + rest == data


async def test_fill_outlives_the_client_that_started_it(
    fake: FakeRegistry, mirror: Daemon, http: aiohttp.ClientSession
) -> None:
    data = os.urandom(2 * 1024 * 1024)
    digest = fake.add_blob(data)
    fake.faults.slow_chunk_delay = 0.01
    async with http.get(blob_url(mirror, digest)) as resp:
        await resp.content.readexactly(1000)
    # The client hung up; the fill goes on and commits.
    assert await committed(mirror, digest)
    assert fake.count("GET", "/blobs/") == 1


@pytest.mark.parametrize(
    "fault",
    ["wrong_bytes", "cut", "stall", "chunked_wrong_bytes", "extra_bytes"],
)
async def test_a_bad_upstream_body_is_never_served_whole_nor_kept(
    fault: str, fake: FakeRegistry, mirror: Daemon, http: aiohttp.ClientSession
) -> None:
    data = os.urandom(1024 * 1024)
    digest = fake.add_blob(data)
    if fault == "wrong_bytes":
        fake.faults.wrong_bytes = True
    elif fault == "cut":
        fake.faults.cut_after = 500_000
    elif fault == "stall":
        fake.faults.stall_after = 500_000
    elif fault == "chunked_wrong_bytes":
        fake.faults.chunked = fake.faults.wrong_bytes = True
    else:
        fake.faults.extra_bytes = 10
    received = b""
    with pytest.raises(aiohttp.ClientPayloadError):
        async with http.get(blob_url(mirror, digest)) as resp:
            assert resp.status == 200
            async for chunk in resp.content.iter_any():
                received += chunk
    assert received != data
    assert len(received) < len(data) + 10
    assert hashlib.sha256(received).hexdigest() != digest.split(":")[1]
    assert not stored(mirror, digest)
    assert await eventually(lambda: temp_files(mirror) == []), temp_files(mirror)
    # The fault clears: the next request fetches again and gets the right bytes.
    fake.faults = type(fake.faults)()
    async with http.get(blob_url(mirror, digest)) as resp:
        assert await resp.read() == data
    assert fake.count("GET", "/blobs/") == 2
    assert await committed(mirror, digest)


async def test_digest_mismatch_is_counted(
    fake: FakeRegistry, mirror: Daemon, http: aiohttp.ClientSession
) -> None:
    digest = fake.add_blob(os.urandom(1000))
    fake.faults.wrong_bytes = True
    with pytest.raises(aiohttp.ClientPayloadError):
        async with http.get(blob_url(mirror, digest)) as resp:
            await resp.read()
    value = mirror.metrics.registry.get_sample_value(
        "cachesvc_digest_mismatches_total", {"registry": "fake.test"}
    )
    assert value == 1


async def test_chunked_upstream_body_is_served_and_verified(
    fake: FakeRegistry, mirror: Daemon, http: aiohttp.ClientSession
) -> None:
    data = os.urandom(700_000)
    digest = fake.add_blob(data)
    fake.faults.chunked = True
    async with http.get(blob_url(mirror, digest)) as resp:
        assert resp.status == 200
        assert await resp.read() == data
    assert await committed(mirror, digest)


async def test_head_never_downloads(
    fake: FakeRegistry, mirror: Daemon, http: aiohttp.ClientSession
) -> None:
    data = os.urandom(5000)
    digest = fake.add_blob(data)
    async with http.head(blob_url(mirror, digest)) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Length"] == "5000"
        assert resp.headers["Docker-Content-Digest"] == digest
        assert await resp.read() == b""
    assert fake.count("GET", "/blobs/") == 0
    assert fake.count("HEAD", "/blobs/") == 1
    assert not stored(mirror, digest)


async def test_upstream_404_is_blob_unknown(
    fake: FakeRegistry, mirror: Daemon, http: aiohttp.ClientSession
) -> None:
    digest = "sha256:" + "ab" * 32
    for method in ("GET", "HEAD"):
        async with http.request(method, blob_url(mirror, digest)) as resp:
            assert resp.status == 404
            if method == "GET":
                body = await resp.json()
                assert body["errors"][0]["code"] == "BLOB_UNKNOWN"


async def test_upstream_unreachable_is_502_quickly(
    start_daemon: StartDaemon,
    http: aiohttp.ClientSession,
    unused_tcp_port: int,
) -> None:
    async with start_daemon({"fake.test": [f"http://127.0.0.1:{unused_tcp_port}"]}) as daemon:
        loop = asyncio.get_running_loop()
        started = loop.time()
        async with http.get(blob_url(daemon, "sha256:" + "cd" * 32)) as resp:
            assert resp.status == 502
            assert (await resp.json())["errors"][0]["code"] == "UNAVAILABLE"
        assert loop.time() - started < 3


async def test_upstream_5xx_is_a_gateway_error_not_a_body(
    fake: FakeRegistry, mirror: Daemon, http: aiohttp.ClientSession
) -> None:
    digest = fake.add_blob(b"hello")
    fake.faults.status = 503
    async with http.get(blob_url(mirror, digest)) as resp:
        assert resp.status == 502
    fake.faults.status = 429
    fake.faults.retry_after = "7"
    async with http.get(blob_url(mirror, digest)) as resp:
        assert resp.status == 429
        assert resp.headers["Retry-After"] == "7"
        assert (await resp.json())["errors"][0]["code"] == "TOOMANYREQUESTS"


@pytest.mark.parametrize(
    ("header", "status", "expected", "content_range"),
    [
        ("bytes=0-9", 206, slice(0, 10), "bytes 0-9/1000"),
        ("bytes=990-", 206, slice(990, 1000), "bytes 990-999/1000"),
        ("bytes=-5", 206, slice(995, 1000), "bytes 995-999/1000"),
        ("bytes=500-99999", 206, slice(500, 1000), "bytes 500-999/1000"),
        ("bytes=1000-", 416, None, "bytes */1000"),
        ("bytes=5-2", 416, None, "bytes */1000"),
        ("bytes=0-1,4-5", 416, None, "bytes */1000"),
        ("bytes=-0", 416, None, "bytes */1000"),
        ("items=0-5", 416, None, "bytes */1000"),
        ("bytes=99999999999999999999999-", 416, None, "bytes */1000"),
    ],
)
@pytest.mark.parametrize("warm", [True, False], ids=["cached", "filling"])
async def test_ranges(
    header: str,
    status: int,
    expected: slice | None,
    content_range: str,
    warm: bool,
    fake: FakeRegistry,
    mirror: Daemon,
    http: aiohttp.ClientSession,
) -> None:
    data = os.urandom(1000)
    digest = fake.add_blob(data)
    if warm:
        async with http.get(blob_url(mirror, digest)) as resp:
            await resp.read()
        assert await committed(mirror, digest)  # so the range below is a real hit
    async with http.get(blob_url(mirror, digest), headers={"Range": header}) as resp:
        assert resp.status == status
        assert resp.headers["Content-Range"] == content_range
        body = await resp.read()
        if expected is not None:
            assert body == data[expected]


async def test_range_during_a_fill_is_served_from_the_growing_file(
    fake: FakeRegistry, mirror: Daemon, http: aiohttp.ClientSession
) -> None:
    data = os.urandom(2 * 1024 * 1024)
    digest = fake.add_blob(data)
    fake.faults.slow_chunk_delay = 0.01
    async with http.get(blob_url(mirror, digest)) as first:
        await first.content.readexactly(100)
        async with http.get(
            blob_url(mirror, digest), headers={"Range": "bytes=1000-1999"}
        ) as ranged:
            assert ranged.status == 206
            assert ranged.headers["Content-Range"] == f"bytes 1000-1999/{len(data)}"
            assert await ranged.read() == data[1000:2000]
        await first.read()
    assert fake.count("GET", "/blobs/") == 1


@pytest.mark.parametrize("range_header", [None, "bytes=0-"])
async def test_a_client_hanging_up_mid_fill_is_quiet_and_logged_as_499(
    range_header: str | None,
    fake: FakeRegistry,
    mirror: Daemon,
    http: aiohttp.ClientSession,
    caplog: pytest.LogCaptureFixture,
) -> None:
    data = os.urandom(2 * 1024 * 1024)
    digest = fake.add_blob(data)
    fake.faults.slow_chunk_delay = 0.01
    headers = {"Range": range_header} if range_header else {}
    with caplog.at_level(logging.INFO):
        async with http.get(blob_url(mirror, digest), headers=headers) as resp:
            await resp.content.readexactly(1000)
        assert await committed(mirror, digest)

        def statuses() -> list[object]:
            return [getattr(r, "fields", {}).get("status") for r in caplog.records
                    if r.name == "cachesvc.access"]  # fmt: skip

        assert await eventually(lambda: statuses() != [])
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], "a hang-up logged an error"
    assert statuses() == [499]


async def test_parallel_open_ended_ranges_closed_early_like_containerd_2(
    fake: FakeRegistry,
    mirror: Daemon,
    http: aiohttp.ClientSession,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """containerd 2.1+ may fetch a layer as parallel open-ended ranges, closing each early."""
    data = os.urandom(8 * 1024 * 1024)
    digest = fake.add_blob(data)
    fake.faults.slow_chunk_delay = 0.002
    quarter = len(data) // 4

    async def part(index: int) -> bytes:
        start = index * quarter
        headers = {"Range": f"bytes={start}-"}
        async with http.get(blob_url(mirror, digest), headers=headers) as resp:
            assert resp.status == 206
            assert resp.headers["Content-Range"] == f"bytes {start}-{len(data) - 1}/{len(data)}"
            return await resp.content.readexactly(quarter)  # then hang up, like containerd

    with caplog.at_level(logging.WARNING):
        parts = await asyncio.gather(*(part(i) for i in range(4)))
        assert b"".join(parts) == data
        assert await committed(mirror, digest)
    assert fake.count("GET", "/blobs/") == 1
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


async def test_an_empty_upstream_body_for_a_non_empty_digest_is_refused_before_the_status(
    fake: FakeRegistry, mirror: Daemon, http: aiohttp.ClientSession
) -> None:
    digest = fake.add_blob(b"not empty")
    fake.faults.empty_body = True
    async with http.get(blob_url(mirror, digest)) as resp:
        assert resp.status == 502  # a complete, empty 200 would be a wrong body
        assert (await resp.json())["errors"][0]["code"] == "DIGEST_INVALID"
    assert not stored(mirror, digest)


async def test_the_empty_blob_is_served(
    fake: FakeRegistry, mirror: Daemon, http: aiohttp.ClientSession
) -> None:
    digest = fake.add_blob(b"")
    async with http.get(blob_url(mirror, digest)) as resp:
        assert resp.status == 200
        assert await resp.read() == b""
    assert await committed(mirror, digest)


async def test_http_1_0_client_of_a_chunked_fill_gets_the_blob(
    fake: FakeRegistry, mirror: Daemon, caplog: pytest.LogCaptureFixture
) -> None:
    data = os.urandom(300_000)
    digest = fake.add_blob(data)
    fake.faults.chunked = True
    assert mirror.mirror_address is not None
    reader, writer = await asyncio.open_connection(*mirror.mirror_address)
    writer.write(f"GET /v2/team/app/blobs/{digest}?ns=fake.test HTTP/1.0\r\n\r\n".encode())
    await writer.drain()
    with caplog.at_level(logging.ERROR):
        raw = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    head, _, body = raw.partition(b"\r\n\r\n")
    assert head.split(b" ")[1] == b"200", head
    assert body == data
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


async def test_a_late_follower_reads_the_file_then_memory_and_gets_exact_bytes(
    fake: FakeRegistry, mirror: Daemon, http: aiohttp.ClientSession
) -> None:
    # A fill keeps only its newest bytes in memory; older ones are read back from the
    # temp file. Hold upstream well past that window, then join from byte 0.
    data = os.urandom(20 * MIB)
    digest = fake.add_blob(data)
    fake.faults.hold_after = 14 * MIB
    async with http.get(blob_url(mirror, digest)) as first:
        await first.content.readexactly(MIB)
        fill = mirror.parts.fills.get(Digest.parse(digest))
        assert fill is not None
        assert await eventually(lambda: fill.written >= 12 * MIB)
        assert isinstance(fill.take(0, 1), int), "the oldest bytes should have left memory"
        assert isinstance(fill.take(fill.received - 1, fill.received), memoryview)
        async with http.get(
            blob_url(mirror, digest), headers={"Range": "bytes=100-199"}
        ) as ranged:
            assert await ranged.read() == data[100:200]
        async with http.get(blob_url(mirror, digest)) as late:
            head = await late.content.readexactly(13 * MIB)
            fake.faults.resume.set()
            assert head + await late.read() == data
        assert await first.read() == data[MIB:]
    assert fake.count("GET", "/blobs/") == 1
    assert await committed(mirror, digest)
    # Once ended and followed by no one, a fill holds no chunks in memory.
    assert await eventually(lambda: fill.followers == 0)
    assert isinstance(fill.take(fill.received - 1, fill.received), int)


async def test_many_fills_at_once_share_one_memory_budget(
    fake: FakeRegistry, mirror: Daemon, http: aiohttp.ClientSession
) -> None:
    blobs = [os.urandom(64 * 1024) for _ in range(16)]
    digests = [fake.add_blob(data) for data in blobs]
    fake.faults.hold_after = 1000

    async def pull(digest: str) -> bytes:
        async with http.get(blob_url(mirror, digest)) as resp:
            return await resp.read()

    pulls = [asyncio.ensure_future(pull(d)) for d in digests]
    assert await eventually(lambda: len(mirror.parts.fills.running()) == 16)
    assert {f.window for f in mirror.parts.fills.running()} == {MEMORY_TOTAL // 16}
    fake.faults.resume.set()
    assert await asyncio.gather(*pulls) == blobs
    assert await eventually(lambda: not mirror.parts.fills.running())


def cached_fraction(path: Path) -> float:
    """The share of ``path``'s pages in the page cache (mincore on a fresh mapping, which
    itself reads nothing: probing with a read would start the kernel's readahead)."""
    libc = ctypes.CDLL(None, use_errno=True)
    size = path.stat().st_size
    pages = -(-size // mmap.PAGESIZE)
    vector = (ctypes.c_ubyte * pages)()
    with path.open("rb") as file, mmap.mmap(file.fileno(), size, access=mmap.ACCESS_COPY) as mm:
        anchor = ctypes.c_char.from_buffer(mm)
        try:
            address = ctypes.addressof(anchor)
            if libc.mincore(ctypes.c_void_p(address), ctypes.c_size_t(size), vector) != 0:
                raise OSError(ctypes.get_errno(), "mincore failed")
        finally:
            del anchor
    return sum(page & 1 for page in vector) / pages


async def test_a_committed_fill_is_read_ahead_into_the_page_cache(
    fake: FakeRegistry, mirror: Daemon, http: aiohttp.ClientSession
) -> None:
    # Written with O_DIRECT, the blob would otherwise be read from disk by its next hit.
    # Bigger than one readahead window (and than what one WILLNEED reads: Linux caps it
    # at the device's max_sectors_kb, 8 MiB here): the whole file must be read ahead,
    # not its first megabytes.
    data = os.urandom(40 * MIB)
    digest = fake.add_blob(data)
    async with http.get(blob_url(mirror, digest)) as resp:
        assert await resp.read() == data
    assert await committed(mirror, digest)
    path = mirror.parts.store.path(Digest.parse(digest))
    assert await eventually(lambda: cached_fraction(path) == 1.0)


async def test_hits_answer_head_ranges_and_a_client_leaving_mid_send_frees_the_blob(
    fake: FakeRegistry,
    mirror: Daemon,
    http: aiohttp.ClientSession,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Hits go out through cachesvc.server.blobsend (zerocopy): the lease that keeps
    # eviction away must be released however the send ends.
    data = os.urandom(64 * MIB)  # more than loopback socket buffers hold
    digest = fake.add_blob(data)
    async with http.get(blob_url(mirror, digest)) as resp:
        assert await resp.read() == data
    assert await committed(mirror, digest)
    leases = mirror.parts.leases
    async with http.head(blob_url(mirror, digest)) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Length"] == str(len(data))
        assert await resp.read() == b""
    async with http.get(blob_url(mirror, digest), headers={"Range": "bytes=10-19"}) as resp:
        assert resp.status == 206
        assert await resp.read() == data[10:20]
    served = mirror.metrics.registry.get_sample_value(
        "cachesvc_served_bytes_total", {"source": "cache"}
    )
    assert served == 10  # the range (the first GET was the fill, counted as upstream)
    url = URL(blob_url(mirror, digest))
    reader, writer = await asyncio.open_connection(url.host, url.port)
    with caplog.at_level(logging.INFO):
        writer.write(f"GET {url.raw_path_qs} HTTP/1.1\r\nHost: {url.host}\r\n\r\n".encode())
        await reader.readexactly(1 << 20)  # headers and the first bytes: the send is under way
        assert len(leases) == 1
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        writer.close()  # a reset
        assert await eventually(lambda: len(leases) == 0)
        assert await eventually(lambda: any(r.name == "cachesvc.access" for r in caplog.records))
    # The access line and the metric say what the client got, not what it asked for.
    (line,) = [getattr(r, "fields", {}) for r in caplog.records if r.name == "cachesvc.access"]
    assert line["status"] == 499
    assert line["cache"] == "hit"
    assert 1 << 20 <= line["bytes"] < len(data)
    assert mirror.metrics.registry.get_sample_value(
        "cachesvc_served_bytes_total", {"source": "cache"}
    ) == served + line["bytes"]
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    async with http.get(blob_url(mirror, digest)) as resp:
        assert await resp.read() == data
    assert fake.count("GET", "/blobs/") == 1
