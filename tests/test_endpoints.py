"""Several endpoints per registry: failover, passive health with cool-down, Retry-After,
rate-limit headers, path prefixes."""

from __future__ import annotations

import os
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import aiohttp
import pytest

from cachesvc.app import Daemon
from tests.clock import AdvancingClock
from tests.conftest import StartDaemon
from tests.fakes.auth import TokenService, running_service
from tests.fakes.registry import FakeRegistry, running
from tests.upstream_helpers import black_hole, metric, refused_url


async def get(http: aiohttp.ClientSession, url: str) -> tuple[int, dict[str, str], bytes]:
    async with http.get(url) as resp:
        return resp.status, dict(resp.headers), await resp.read()


async def healthy(http: aiohttp.ClientSession, daemon: Daemon, endpoint: str) -> float:
    """The health gauge of one endpoint of registry ``fake.test``."""
    return await metric(
        http, daemon, "cachesvc_upstream_endpoint_healthy", registry="fake.test", endpoint=endpoint
    )


@asynccontextmanager
async def first_endpoint(kind: str) -> AsyncIterator[tuple[str, FakeRegistry | None]]:
    if kind == "refused":
        yield refused_url(), None
        return
    async with running(FakeRegistry()) as bad:
        bad.faults.status = int(kind)
        bad.faults.retry_after = "3600" if kind == "429" else None
        yield bad.url, bad


@pytest.mark.parametrize("kind", ["refused", "503", "429"])
async def test_failover_to_the_next_endpoint_and_skip_the_failed_one(
    kind: str, fake: FakeRegistry, start_daemon: StartDaemon, http: aiohttp.ClientSession
) -> None:
    digest, blobs = fake.add_image("team/app", "v1", [os.urandom(2000), os.urandom(3000)])
    async with (
        first_endpoint(kind) as (bad_url, bad),
        start_daemon({"fake.test": [bad_url, fake.url]}) as daemon,
    ):
        base = f"{daemon.mirror_url}/v2/team/app"
        status, headers, _ = await get(http, f"{base}/manifests/v1?ns=fake.test")
        assert status == 200
        assert headers["Docker-Content-Digest"] == digest
        for blob in blobs:
            status, _, body = await get(http, f"{base}/blobs/{blob}?ns=fake.test")
            assert status == 200
            assert body == fake.blobs[blob]
        if bad is not None:
            assert sum(bad.requests.values()) == 1  # asked once, then skipped
        assert await healthy(http, daemon, bad_url) == 0
        assert await healthy(http, daemon, fake.url) == 1


async def test_a_black_holed_endpoint_delays_only_the_first_request(
    fake: FakeRegistry, start_daemon: StartDaemon, http: aiohttp.ClientSession
) -> None:
    blobs = [fake.add_blob(os.urandom(500)) for _ in range(6)]
    async with (
        black_hole() as dead,
        start_daemon(
            {"fake.test": [dead, fake.url]},
            timeouts={"connect": "2s", "first_byte": "4s", "stall": "2s"},
        ) as daemon,
    ):
        base = f"{daemon.mirror_url}/v2/team/app/blobs"
        status, _, _ = await get(http, f"{base}/{blobs[0]}?ns=fake.test")  # waits first_byte
        assert status == 200
        started = time.monotonic()
        for blob in blobs[1:]:
            status, _, body = await get(http, f"{base}/{blob}?ns=fake.test")
            assert (status, body) == (200, fake.blobs[blob])
        # Five requests together well under one first_byte timeout: none waited on the dead one.
        assert time.monotonic() - started < 3.0


async def test_a_cooled_down_endpoint_is_retried_and_restored(
    fake: FakeRegistry,
    start_daemon: StartDaemon,
    http: aiohttp.ClientSession,
    clock: AdvancingClock,
) -> None:
    blobs = [fake.add_blob(os.urandom(100)) for _ in range(4)]
    async with running(FakeRegistry()) as cdn:
        for blob in blobs:
            cdn.blobs[blob] = fake.blobs[blob]
        cdn.faults.status = 503
        async with start_daemon(
            {"fake.test": [cdn.url, fake.url]},
            **{"registry:fake.test": {"cooldown": "300ms", "max_cooldown": "1s"}},
        ) as daemon:
            base = f"{daemon.mirror_url}/v2/team/app/blobs"
            assert (await get(http, f"{base}/{blobs[0]}?ns=fake.test"))[0] == 200
            assert (await get(http, f"{base}/{blobs[1]}?ns=fake.test"))[0] == 200
            assert cdn.count("GET", "/blobs/") == 1  # skipped while cooling down
            cdn.faults.status = None  # the CDN recovers
            clock.advance(0.4)  # past the 300 ms cool-down
            assert (await get(http, f"{base}/{blobs[2]}?ns=fake.test"))[0] == 200
            assert cdn.count("GET", "/blobs/") == 2  # retried after the cool-down...
            assert (await get(http, f"{base}/{blobs[3]}?ns=fake.test"))[0] == 200
            assert cdn.count("GET", "/blobs/") == 3  # ...and in use again
            assert fake.count("GET", "/blobs/") == 2
            assert await healthy(http, daemon, cdn.url) == 1


async def test_retry_after_keeps_the_endpoint_unasked_until_it_expires(
    fake: FakeRegistry, mirror: Daemon, http: aiohttp.ClientSession, clock: AdvancingClock
) -> None:
    blobs = [fake.add_blob(os.urandom(100)) for _ in range(3)]
    fake.faults.status, fake.faults.retry_after = 429, "2"
    base = f"{mirror.mirror_url}/v2/team/app/blobs"
    status, headers, body = await get(http, f"{base}/{blobs[0]}?ns=fake.test")
    assert (status, headers["Retry-After"]) == (429, "2")
    assert b"TOOMANYREQUESTS" in body
    fake.faults.status = None
    status, headers, _ = await get(http, f"{base}/{blobs[1]}?ns=fake.test")
    assert status == 429  # not asked: its Retry-After has not expired
    assert 1 <= int(headers["Retry-After"]) <= 2
    assert fake.count("GET", "/blobs/") == 1
    clock.advance(2.1)
    assert (await get(http, f"{base}/{blobs[2]}?ns=fake.test"))[0] == 200


async def test_ratelimit_headers_feed_gauges(
    fake: FakeRegistry, mirror: Daemon, http: aiohttp.ClientSession
) -> None:
    fake.add_image("team/app", "v1", [b"x"])
    fake.response_headers = {"ratelimit-limit": "100;w=21600", "ratelimit-remaining": "76;w=21600"}
    assert (await get(http, f"{mirror.mirror_url}/v2/team/app/manifests/v1?ns=fake.test"))[0] == 200
    labels = {"registry": "fake.test", "endpoint": fake.url}
    assert await metric(http, mirror, "cachesvc_upstream_ratelimit_remaining", **labels) == 76
    assert await metric(http, mirror, "cachesvc_upstream_ratelimit_limit", **labels) == 100


async def test_a_path_prefix_rewrites_repository_and_token_scope(
    fake: FakeRegistry, start_daemon: StartDaemon, http: aiohttp.ClientSession
) -> None:
    """A Harbor-style proxy project ``hub-proxy`` in front of the origin: CDN first, origin last."""
    async with running_service(TokenService()) as tokens, running(FakeRegistry()) as cdn:
        cdn.gate = tokens
        digest, blobs = cdn.add_image("hub-proxy/team/app", "v1", [b"layer"])
        endpoints = [{"url": cdn.url, "path_prefix": "hub-proxy"}, fake.url]
        async with start_daemon({"fake.test": endpoints}) as daemon:
            base = f"{daemon.mirror_url}/v2/team/app"
            status, headers, _ = await get(http, f"{base}/manifests/v1?ns=fake.test")
            assert (status, headers["Docker-Content-Digest"]) == (200, digest)
            assert (await get(http, f"{base}/blobs/{blobs[1]}?ns=fake.test"))[0] == 200
        assert cdn.count("GET", "/v2/hub-proxy/team/app/manifests/v1") == 2  # challenge + GET
        assert {r.scope for r in tokens.requests} == {"repository:hub-proxy/team/app:pull"}
        assert sum(fake.requests.values()) == 0
