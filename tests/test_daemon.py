"""Daemon-level behaviour: routing, restart hygiene, token flow, metrics and access logs."""

from __future__ import annotations

import json
import logging
import os
from functools import partial
from pathlib import Path

import aiohttp
import pytest

from cachesvc.app import Daemon
from cachesvc.oci import Digest
from tests.conftest import StartDaemon
from tests.fakes.registry import FakeRegistry, running
from tests.polling import eventually
from tests.upstream_helpers import metrics, sample


async def test_routing_by_ns_prefix_and_default(
    fake: FakeRegistry,
    start_daemon: StartDaemon,
    http: aiohttp.ClientSession,
) -> None:
    digest = fake.add_blob(b"routed")
    other = FakeRegistry()

    async with running(other), start_daemon(
        {"fake.test": [fake.url], "other.test:5000": [other.url]}
    ) as daemon:
        base = daemon.mirror_url
        for path in (
            f"/v2/team/app/blobs/{digest}?ns=fake.test",  # containerd's way
            f"/v2/fake.test/team/app/blobs/{digest}",  # registry as the first path component
            f"/v2/team/app/blobs/{digest}",  # default_registry
        ):
            async with http.get(base + path) as resp:
                assert resp.status == 200, path
                assert await resp.read() == b"routed"
        async with http.get(f"{base}/v2/team/app/blobs/{digest}?ns=other.test:5000") as resp:
            assert resp.status == 200  # content-addressed: already on disk, any registry
        assert other.count("GET", "/blobs/") == 0
        async with http.head(f"{base}/v2/other.test:5000/x/blobs/sha256:{'b' * 64}") as resp:
            assert resp.status == 404
        assert other.count("HEAD", "/v2/x/blobs/") == 1


async def test_docker_hub_single_names_get_library(
    fake: FakeRegistry,
    start_daemon: StartDaemon,
    http: aiohttp.ClientSession,
) -> None:
    fake.add_image("library/nginx", "1.27", [b"n"])
    async with (
        start_daemon({"docker.io": [fake.url]}) as daemon,
        http.get(f"{daemon.mirror_url}/v2/nginx/manifests/1.27?ns=docker.io") as resp,
    ):
        assert resp.status == 200
    assert fake.count("GET", "/v2/library/nginx/manifests/1.27") == 1


async def test_leftover_temp_files_are_removed_at_start(
    fake: FakeRegistry,
    start_daemon: StartDaemon,
    storage: Path,
) -> None:
    (storage / "tmp").mkdir(parents=True)
    (storage / "tmp" / ("a" * 64 + ".deadbeef")).write_bytes(b"half a blob")
    async with start_daemon({"fake.test": [fake.url]}) as daemon:
        assert os.listdir(daemon.parts.store.tmp_root) == []


async def test_cache_survives_a_restart(
    fake: FakeRegistry,
    start_daemon: StartDaemon,
    http: aiohttp.ClientSession,
) -> None:
    digest, _ = fake.add_image("team/app", "v1", [b"layer"])
    for _ in range(2):
        async with start_daemon({"fake.test": [fake.url]}) as daemon:
            async with http.get(f"{daemon.mirror_url}/v2/team/app/manifests/{digest}") as resp:
                assert resp.status == 200
            async with http.get(f"{daemon.mirror_url}/v2/team/app/manifests/v1") as resp:
                assert resp.status == 200
    assert fake.count("GET", f"/manifests/{digest}") == 1
    assert fake.count("GET", "/manifests/v1") == 1


async def test_anonymous_bearer_flow_caches_the_token(
    fake: FakeRegistry, mirror: Daemon, http: aiohttp.ClientSession
) -> None:
    fake.require_token = True
    blobs = [fake.add_blob(os.urandom(100)) for _ in range(3)]
    for digest in blobs:
        async with http.get(f"{mirror.mirror_url}/v2/team/app/blobs/{digest}") as resp:
            assert resp.status == 200
    assert fake.tokens_issued == 1
    assert fake.count("GET", "/token") == 1


async def test_token_service_refusal_is_unauthorized_with_a_hint(
    fake: FakeRegistry, mirror: Daemon, http: aiohttp.ClientSession
) -> None:
    fake.require_token = True
    fake.token_status = 401
    digest = fake.add_blob(b"x")
    async with http.get(f"{mirror.mirror_url}/v2/team/app/blobs/{digest}") as resp:
        assert resp.status == 401
        error = (await resp.json())["errors"][0]
    assert error["code"] == "UNAUTHORIZED"
    assert "fake.test" in error["message"]
    assert "credentials" in error["message"]


async def test_metrics_after_a_known_sequence(
    fake: FakeRegistry, mirror: Daemon, http: aiohttp.ClientSession
) -> None:
    data = os.urandom(10_000)
    digest = fake.add_blob(data)
    url = f"{mirror.mirror_url}/v2/team/app/blobs/{digest}?ns=fake.test"
    for _ in range(3):
        async with http.get(url) as resp:
            await resp.read()
        # Let the commit land, so the next request is a plain hit, not a join.
        assert await eventually(lambda: mirror.parts.store.size(Digest.parse(digest)) is not None)
    async with http.get(f"{mirror.mirror_url}/v2/team/app/blobs/sha256:{'e' * 64}") as resp:
        assert resp.status == 404
    value = partial(sample, await metrics(http, mirror))
    assert value("cachesvc_requests_total", kind="blob", result="miss", registry="fake.test") == 1
    assert value("cachesvc_requests_total", kind="blob", result="hit", registry="fake.test") == 2
    assert value("cachesvc_requests_total", kind="blob", result="error", registry="fake.test") == 1
    assert value("cachesvc_served_bytes_total", source="cache") == 20_000
    assert value("cachesvc_served_bytes_total", source="upstream") == 10_000
    assert value("cachesvc_upstream_bytes_total", registry="fake.test") == 10_000


async def test_health_and_readiness(mirror: Daemon, http: aiohttp.ClientSession) -> None:
    async with http.get(f"{mirror.admin_url}/healthz") as resp:
        assert resp.status == 200
    async with http.get(f"{mirror.admin_url}/readyz") as resp:
        assert resp.status == 200


async def test_one_json_access_log_line_per_request(
    fake: FakeRegistry,
    mirror: Daemon,
    http: aiohttp.ClientSession,
    caplog: pytest.LogCaptureFixture,
) -> None:
    from cachesvc.logs import JsonFormatter

    digest = fake.add_blob(b"logged")
    with caplog.at_level(logging.INFO, logger="cachesvc.access"):
        async with http.get(f"{mirror.mirror_url}/v2/team/app/blobs/{digest}?ns=fake.test") as resp:
            await resp.read()
        # The line is written once the handler returns, which may be just after the
        # client has read the last byte.
        assert await eventually(lambda: any(r.name == "cachesvc.access" for r in caplog.records))
    records = [r for r in caplog.records if r.name == "cachesvc.access"]
    assert len(records) == 1
    line = json.loads(JsonFormatter().format(records[0]))
    assert line["status"] == 200
    assert line["registry"] == "fake.test"
    assert line["repository"] == "team/app"
    assert line["reference"] == digest
    assert line["cache"] == "miss"
    assert line["bytes"] == 6
    assert line["method"] == "GET"
    assert {"time", "client", "duration_ms", "path"} <= set(line)
