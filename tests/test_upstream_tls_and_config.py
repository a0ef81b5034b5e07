"""TLS per registry (CA bundle, client certificate, insecure) and the new configuration keys."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import aiohttp
import pytest

from cachesvc.app import Daemon
from cachesvc.config import RegistryConfig, parse_config
from cachesvc.errors import ConfigError
from tests.conftest import StartDaemon
from tests.fakes.registry import FakeRegistry
from tests.tls_upstream import https, server_context


async def status_of(http: aiohttp.ClientSession, daemon: Daemon, digest: str) -> tuple[int, str]:
    async with http.get(f"{daemon.mirror_url}/v2/team/app/blobs/{digest}?ns=tls.test") as resp:
        return resp.status, await resp.text()


async def test_ca_file_and_client_certificate_reach_an_mtls_registry(
    pki: dict[str, Any], start_daemon: StartDaemon, http: aiohttp.ClientSession
) -> None:
    registry = FakeRegistry()
    # One blob per daemon: they share the storage root, and a cached blob needs no upstream.
    digest, second, third = (registry.add_blob(b"over mutual tls %d" % i) for i in range(3))
    async with https(registry, server_context(pki, mutual=True)) as url:
        with_cert = {
            "ca_file": str(pki["ca_file"]),
            "client_cert": str(pki["cert"]),
            "client_key": str(pki["key"]),
        }
        async with start_daemon({"tls.test": [url]}, **{"registry:tls.test": with_cert}) as daemon:
            assert (await status_of(http, daemon, digest))[0] == 200
        async with start_daemon(
            {"tls.test": [url]}, **{"registry:tls.test": {"ca_file": str(pki["ca_file"])}}
        ) as daemon:
            status, body = await status_of(http, daemon, second)  # no client certificate
            assert status == 502
        async with start_daemon({"tls.test": [url]}) as daemon:
            status, body = await status_of(http, daemon, third)  # system CAs only: unverified
            assert status == 502
            assert "unreachable" in body


async def test_insecure_skips_verification(
    pki: dict[str, Any], start_daemon: StartDaemon, http: aiohttp.ClientSession
) -> None:
    registry = FakeRegistry()
    digest = registry.add_blob(b"unverified")
    async with (
        https(registry, server_context(pki, mutual=False)) as url,
        start_daemon({"tls.test": [url]}, **{"registry:tls.test": {"insecure": True}}) as daemon,
    ):
        assert (await status_of(http, daemon, digest))[0] == 200


def registry_config(**keys: Any) -> RegistryConfig:
    config = parse_config({"registries": {"r.test": {"endpoints": ["https://r.test"], **keys}}})
    return config.registries["r.test"]


def test_defaults_of_the_upstream_keys() -> None:
    r = registry_config()
    assert (r.max_stale, r.negative_ttl, r.cooldown, r.max_cooldown) == (7 * 86400, 15, 5, 300)
    assert (r.max_concurrent, r.requests_per_second, r.burst) == (None, None, 1)
    assert (r.queue_size, r.queue_timeout, r.insecure, r.ca_file) == (256, 10, False, None)
    assert r.proxy is None  # the environment decides
    assert registry_config(proxy="direct").proxy == "direct"
    assert registry_config(proxy="proxy.corp:3128").proxy == "http://proxy.corp:3128"
    assert r.path_prefix(0) == ""
    assert registry_config(requests_per_minute=120).requests_per_second == 2
    prefixed = registry_config(
        path_prefix="proxy/hub",
        endpoints=[{"url": "https://cdn.test/sub", "path_prefix": ""}, "https://r.test"],
    )
    assert prefixed.endpoints == ("https://cdn.test/sub", "https://r.test")
    assert [prefixed.path_prefix(0), prefixed.path_prefix(1)] == ["", "proxy/hub"]
    assert parse_config(
        {
            "credentials_file": "/etc/cachesvc/config.json",
            "registries": {"r.test": {"endpoints": ["https://r.test"]}},
        }
    ).credentials_file == Path("/etc/cachesvc/config.json")


@pytest.mark.parametrize(
    ("keys", "path"),
    [
        ({"endpoints": ["http://registry.corp.test"]}, "registries.r.test.endpoints[0]"),
        (
            {"requests_per_second": 1, "requests_per_minute": 60},
            "registries.r.test.requests_per_minute",
        ),
        ({"requests_per_second": 0}, "registries.r.test.requests_per_second"),
        ({"client_key": "/k.pem"}, "registries.r.test.client_key"),
        ({"path_prefix": "Bad/../Prefix"}, "registries.r.test.path_prefix"),
        ({"max_concurrent": 0}, "registries.r.test.max_concurrent"),
        ({"burst": True}, "registries.r.test.burst"),
        ({"insecure": "yes"}, "registries.r.test.insecure"),
        ({"max_stale": "forever"}, "registries.r.test.max_stale"),
        ({"cooldown": "10s", "max_cooldown": "1s"}, "registries.r.test.max_cooldown"),
        ({"proxy": "https://proxy.corp:3128"}, "registries.r.test.proxy"),
        ({"proxy": "http://proxy.corp:3128/path"}, "registries.r.test.proxy"),
        ({"proxy": 3128}, "registries.r.test.proxy"),
        (
            {"endpoints": [{"url": "https://a.test", "prefix": "x"}]},
            "registries.r.test.endpoints[0].prefix",
        ),
    ],
)
def test_bad_upstream_keys_name_their_key_path(keys: dict[str, Any], path: str) -> None:
    with pytest.raises(ConfigError) as info:
        registry_config(**keys)
    assert info.value.key == path


def test_plain_http_is_fine_for_loopback_and_with_insecure() -> None:
    assert registry_config(endpoints=["http://127.0.0.1:5001"]).insecure is False
    assert registry_config(endpoints=["http://registry.corp.test"], insecure=True).insecure


async def test_an_unreadable_ca_file_is_a_config_error_naming_the_key(
    start_daemon: StartDaemon, tmp_path: Path
) -> None:
    with pytest.raises(ConfigError) as info:
        async with start_daemon(
            {"tls.test": ["https://127.0.0.1:1"]},
            **{"registry:tls.test": {"ca_file": str(tmp_path / "missing.pem")}},
        ):
            pass
    assert info.value.key == "registries.tls.test.ca_file"
