"""Rate limits (our own limiter), stale tag serving bounded by max_stale, negative caching."""

from __future__ import annotations

import asyncio
import bisect
import time

import aiohttp

from cachesvc.app import Daemon
from tests.clock import AdvancingClock
from tests.conftest import StartDaemon, with_settings
from tests.fakes.registry import FakeRegistry
from tests.upstream_helpers import metric

# Arrival times are taken at the fake upstream, which shares the event loop with cachesvc and
# 200 client connections: a request paced at t can reach it some ms late (measured up to about
# 17 ms at the start of the burst, alone; a full-suite run on two busy cores once bunched 11 into
# 0.95 s), bunching it with the next. The limiter spaces requests 1/rate apart when it releases
# them; the upstream-side windows are this much shorter. A limiter letting 20/s through would
# still put about 17 in such a window.
JITTER = 0.15


def manifest_url(daemon: Daemon, ref: str) -> str:
    return f"{daemon.mirror_url}/v2/team/app/manifests/{ref}?ns=fake.test"


def busiest_window(times: list[float], width: float) -> int:
    """The most arrivals in any half-open window ``[t, t + width)``."""
    times = sorted(times)
    return max((bisect.bisect_left(times, t + width) - i for i, t in enumerate(times)), default=0)


async def test_two_hundred_cold_manifests_never_exceed_ten_per_second_upstream(
    fake: FakeRegistry, start_daemon: StartDaemon, http: aiohttp.ClientSession
) -> None:
    for i in range(200):
        fake.add_image("team/app", f"t{i}", [f"layer {i}".encode()])
    limits = {"requests_per_second": 10, "queue_timeout": "3s", "queue_size": 500}
    async with with_settings(start_daemon, fake, **limits) as daemon:

        async def pull(i: int) -> tuple[int, str | None, bytes]:
            url = manifest_url(daemon, f"t{i}")
            async with http.get(url) as resp:
                return resp.status, resp.headers.get("Retry-After"), await resp.read()

        started = time.monotonic()
        results = await asyncio.gather(*(pull(i) for i in range(200)))
        elapsed = time.monotonic() - started
        rejected = await metric(
            http,
            daemon,
            "cachesvc_upstream_limiter_rejections_total",
            registry="fake.test",
            reason="rate",
        )
    arrivals = [t for t, method, path in fake.arrivals if "/manifests/" in path]
    served = [r for r in results if r[0] == 200]
    refused = [r for r in results if r[0] != 200]
    assert len(arrivals) == len(served)  # one upstream GET per served tag, nothing else
    assert busiest_window(arrivals, 1.0 - JITTER) <= 10
    # Within the 3 s queue bound about 30 go through; the rest are told to come back.
    assert 25 <= len(served) <= 35, (len(served), elapsed)
    assert all(
        status == 429 and retry and b"TOOMANYREQUESTS" in body for status, retry, body in refused
    )
    assert rejected + sum(1 for _, _, b in refused if b"queue timeout" in b) == len(refused)
    assert elapsed < 10  # refusals were decided up front, not after waiting


async def test_a_full_queue_is_refused_at_once(
    fake: FakeRegistry, start_daemon: StartDaemon, http: aiohttp.ClientSession
) -> None:
    for i in range(5):
        fake.add_image("team/app", f"t{i}", [b"x"])
    fake.faults.manifest_delay = 0.5
    limits = {"max_concurrent": 1, "queue_size": 2, "queue_timeout": "10s"}
    async with with_settings(start_daemon, fake, **limits) as daemon:

        async def pull(i: int) -> int:
            url = manifest_url(daemon, f"t{i}")
            async with http.get(url) as resp:
                await resp.read()
                return resp.status

        statuses = await asyncio.gather(*(pull(i) for i in range(5)))
        full = await metric(
            http,
            daemon,
            "cachesvc_upstream_limiter_rejections_total",
            registry="fake.test",
            reason="queue_full",
        )
    assert sorted(statuses) == [200, 200, 200, 429, 429]
    assert full == 2


async def test_stale_tag_carries_a_warning_is_counted_and_bounded_by_max_stale(
    fake: FakeRegistry,
    start_daemon: StartDaemon,
    http: aiohttp.ClientSession,
    clock: AdvancingClock,
) -> None:
    digest, _ = fake.add_image("team/app", "v1", [b"one"])
    settings = {"tag_ttl": "0s", "max_stale": "1s"}
    async with with_settings(start_daemon, fake, **settings) as daemon:
        url = manifest_url(daemon, "v1")
        async with http.get(url) as resp:
            assert resp.status == 200
            assert "Warning" not in resp.headers
        fake.faults.status = 503
        async with http.get(url) as resp:
            assert resp.status == 200
            assert resp.headers["Docker-Content-Digest"] == digest
            assert resp.headers["Warning"].startswith('110 cachesvc "stale')
        assert await metric(http, daemon, "cachesvc_stale_served_total", registry="fake.test") == 1
        clock.advance(1.1)  # beyond max_stale: the error surfaces
        async with http.get(url) as resp:
            assert resp.status == 502
            error = (await resp.json())["errors"][0]
        assert error["detail"]["max_stale_seconds"] == 1
        # Content by digest is served whatever upstream does.
        async with http.get(url.replace("v1", digest)) as resp:
            assert resp.status == 200


async def test_a_refusal_is_not_papered_over_with_a_stale_tag(
    fake: FakeRegistry, start_daemon: StartDaemon, http: aiohttp.ClientSession
) -> None:
    fake.add_image("team/app", "v1", [b"one"])
    async with with_settings(start_daemon, fake, tag_ttl="0s") as daemon:
        url = manifest_url(daemon, "v1")
        async with http.get(url) as resp:
            assert resp.status == 200
        fake.faults.status = 403
        async with http.get(url) as resp:
            assert resp.status == 403


async def test_our_own_rate_limit_falls_back_to_the_stale_tag(
    fake: FakeRegistry, start_daemon: StartDaemon, http: aiohttp.ClientSession
) -> None:
    digest, _ = fake.add_image("team/app", "v1", [b"one"])
    settings = {"tag_ttl": "0s", "requests_per_minute": 1, "queue_timeout": "1s"}
    async with with_settings(start_daemon, fake, **settings) as daemon:
        url = manifest_url(daemon, "v1")
        async with http.get(url) as resp:
            assert resp.status == 200
        async with http.get(url) as resp:  # the bucket is empty for a minute
            assert resp.status == 200
            assert resp.headers["Docker-Content-Digest"] == digest
            assert "stale" in resp.headers["Warning"]
    assert fake.count("GET", "/manifests/") == 1


async def test_an_upstream_404_for_a_tag_is_remembered_for_negative_ttl(
    fake: FakeRegistry,
    start_daemon: StartDaemon,
    http: aiohttp.ClientSession,
    clock: AdvancingClock,
) -> None:
    async with with_settings(start_daemon, fake, negative_ttl="500ms") as daemon:
        url = manifest_url(daemon, "typo")
        for _ in range(5):
            async with http.get(url) as resp:
                assert resp.status == 404
                assert (await resp.json())["errors"][0]["code"] == "MANIFEST_UNKNOWN"
        assert fake.count("GET", "/manifests/typo") == 1
        assert (
            await metric(http, daemon, "cachesvc_negative_cache_hits_total", registry="fake.test")
            == 4
        )
        fake.add_image("team/app", "typo", [b"now it exists"])
        clock.advance(0.6)  # past negative_ttl
        async with http.get(url) as resp:
            assert resp.status == 200
