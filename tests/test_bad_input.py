"""Bad requests get a 4xx OCI error, touch nothing outside the root, and the daemon goes on."""

from __future__ import annotations

import asyncio
import logging
import os
from pathlib import Path

import aiohttp
import pytest

from cachesvc.app import Daemon
from tests.fakes.registry import FakeRegistry

GOOD_DIGEST = "sha256:" + "a" * 64


def snapshot(root: Path) -> set[str]:
    return {str(p) for p in root.rglob("*")}


async def raw_request(daemon: Daemon, request_line: bytes, extra: bytes = b"") -> tuple[int, bytes]:
    """Send bytes exactly as given (no client-side normalisation of ``..`` or ``%2e``)."""
    assert daemon.mirror_address is not None
    host, port = daemon.mirror_address
    reader, writer = await asyncio.open_connection(host, port)
    writer.write(request_line + b"\r\nHost: x\r\n" + extra + b"Connection: close\r\n\r\n")
    await writer.drain()
    data = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    status = int(data.split(b" ", 2)[1])
    return status, data


BAD_PATHS = [
    "/v2/../../etc/passwd/manifests/latest",
    "/v2/team/%2e%2e/%2e%2e/blobs/" + GOOD_DIGEST,
    "/v2/team/app/blobs/sha256:..%2f..%2fetc",
    "/v2/team/app/blobs/sha256:../../../etc/passwd",
    "/v2//etc/passwd/blobs/" + GOOD_DIGEST,
    "/v2/team/app/blobs/%2fetc%2fpasswd",
    "/v2/Team/App/manifests/latest",
    "/v2/" + "a" * 300 + "/manifests/latest",
    "/v2/team/app/blobs/sha256:" + "A" * 64,
    "/v2/team/app/blobs/sha256:" + "a" * 63,
    "/v2/team/app/blobs/md5:" + "a" * 32,
    "/v2/team/app/blobs/sha256",
    "/v2/team/app/blobs/:abc",
    "/v2/team/app/manifests/-bad-tag",
    "/v2/team/app/manifests/" + "t" * 129,
    "/v2/team/app/manifests/sha256:zz",
    "/v2/team/app/referrers/not-a-digest",
    "/v2/team/app/tags/list?n=abc",
    "/v2/team/app/tags/list?n=0",
    "/v2/team/app/tags/list?last=..%2f..",
    "/v2/team/app/manifests/latest?ns=not%20a%20host",
    "/v2/team/app/manifests/latest?ns=unconfigured.example",
    "/v2/team/app/blobs/" + GOOD_DIGEST + "?ns=evil.test",
    "/v2/team/app/uploads/",
    "/v2/team/app",
    "/v2/team/app/blobs/",
]


@pytest.mark.parametrize("path", BAD_PATHS)
async def test_bad_paths_are_4xx_and_touch_nothing(
    path: str, fake: FakeRegistry, mirror: Daemon, storage: Path, tmp_path: Path
) -> None:
    before = snapshot(tmp_path)
    status, data = await raw_request(mirror, f"GET {path} HTTP/1.1".encode())
    assert 400 <= status < 500, data[:300]
    assert b"Traceback" not in data
    if b"application/json" in data:
        assert b'"errors"' in data
    assert snapshot(tmp_path) - before <= {str(storage / "index" / "cache.db-wal")}
    assert sum(fake.requests.values()) == 0, "a bad request reached upstream"
    # ...and the daemon keeps serving.
    status, _ = await raw_request(mirror, b"GET /v2/ HTTP/1.1")
    assert status == 200


@pytest.mark.parametrize("method", ["PUT", "POST", "DELETE", "PATCH"])
async def test_writes_are_unsupported(method: str, mirror: Daemon) -> None:
    status, data = await raw_request(
        mirror, f"{method} /v2/team/app/blobs/uploads/ HTTP/1.1".encode(), b"Content-Length: 0\r\n"
    )
    assert status == 405
    assert b"UNSUPPORTED" in data


async def test_oversized_headers_are_rejected_cleanly(
    mirror: Daemon, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO):
        status, _ = await raw_request(
            mirror, b"GET /v2/ HTTP/1.1", b"X-Big: " + b"a" * 100_000 + b"\r\n"
        )
        assert 400 <= status < 500
        status, _ = await raw_request(mirror, b"GET /v2/" + b"a" * 100_000 + b" HTTP/1.1")
        assert 400 <= status < 500
    assert not [r for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR]
    status, _ = await raw_request(mirror, b"GET /v2/ HTTP/1.1")
    assert status == 200


@pytest.mark.parametrize(
    "range_header",
    ["bytes=99999999999999999999-", "bytes=-99999999999999999999", "bytes=" + "1" * 5000 + "-",
     "bytes=0-1," * 200, "bytes=\u00e9-"],
)  # fmt: skip
async def test_absurd_ranges_are_4xx(
    range_header: str, fake: FakeRegistry, mirror: Daemon, http: aiohttp.ClientSession
) -> None:
    digest = fake.add_blob(os.urandom(100))
    for _ in range(2):  # on the fill, then on the cached file
        async with http.get(
            f"{mirror.mirror_url}/v2/team/app/blobs/{digest}?ns=fake.test",
            headers={"Range": range_header},
        ) as resp:
            assert 400 <= resp.status < 500
            await resp.read()


async def test_unconfigured_registry_is_never_contacted(
    fake: FakeRegistry, mirror: Daemon, http: aiohttp.ClientSession
) -> None:
    async with http.get(f"{mirror.mirror_url}/v2/other.example/app/manifests/v1") as resp:
        # Not a configured prefix: the default registry is asked for "other.example/app",
        # which is not a valid name there... or a plain 404 from it; never another host.
        assert resp.status in (400, 404)
    async with http.get(f"{mirror.mirror_url}/v2/app/manifests/v1?ns=other.example") as resp:
        assert resp.status == 404
        assert (await resp.json())["errors"][0]["code"] == "NAME_UNKNOWN"
        assert "not mirrored" in (await resp.json())["errors"][0]["message"]


async def test_random_paths_never_get_a_5xx(fake: FakeRegistry, mirror: Daemon) -> None:
    """A seeded, bounded fuzz of the path grammar: every answer is < 500, nothing leaks."""
    import random

    rng = random.Random(20261126)
    pieces = ["v2", "..", ".", "%2e%2e", "%2F", "blobs", "manifests", "tags", "list", "referrers",
              "sha256:" + "a" * 64, "sha512:" + "b" * 128, "sha256:", "A", "a-b", "a__b", "x" * 70,
              "%00", "%ff", "~", "ns=fake.test", "@", ":", "latest", "uploads", "", "v1.0"]  # fmt: skip
    for _ in range(300):
        path = "/v2/" + "/".join(rng.choice(pieces) for _ in range(rng.randint(1, 7)))
        if rng.random() < 0.3:
            path += "?" + rng.choice(["ns=fake.test", "ns=", "ns=x%00", "n=5&last=a", "ns=a" * 50])
        status, data = await raw_request(mirror, f"GET {path} HTTP/1.1".encode())
        assert status < 500, (path, data[:200])
        assert b"Traceback" not in data
    assert not [p for p in (mirror.parts.store.root.parent).rglob("*") if ".." in p.name]
