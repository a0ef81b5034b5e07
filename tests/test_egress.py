"""Forward (egress) proxies: the registry's ``proxy`` key, HTTP(S)_PROXY and NO_PROXY."""

from __future__ import annotations

import asyncio
import os
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from yarl import URL

from cachesvc.config import DIRECT, proxy_environment, proxy_url
from cachesvc.errors import ConfigError
from cachesvc.upstream.egress import Egress, bypassed
from tests.conftest import StartDaemon, blob_url, with_settings
from tests.fakes.auth import TokenService
from tests.fakes.forward_proxy import ForwardProxy, running_proxy
from tests.fakes.registry import FakeRegistry
from tests.peers.ports import refused_url
from tests.peers_fixtures import CachesvcProcess
from tests.test_redirects import Cdn, serving
from tests.tls_upstream import https, plain, server_context


def upstream(
    registry: FakeRegistry, pki: dict[str, Any], tunnel: bool, settings: dict[str, Any]
) -> AbstractAsyncContextManager[str]:
    """``registry`` over https when ``tunnel`` (its CA goes into the registry ``settings``: a
    proxy must then CONNECT), else over plain http; yields its URL."""
    if tunnel:
        settings["ca_file"] = str(pki["ca_file"])
        return https(registry, server_context(pki, mutual=False))
    return plain(registry)


@pytest.mark.parametrize(
    ("host", "port", "no_proxy", "expected"),
    [
        ("registry.corp", 443, "", False),
        ("registry.corp", 443, "*", True),
        ("registry.corp", 443, "corp", True),
        ("registry.corp", 443, ".corp", True),
        ("a.registry.corp", 443, "registry.corp", True),
        ("notregistry.corp", 443, "registry.corp", False),
        ("registry.corp", 443, "registry.corp:443", True),
        ("registry.corp", 443, "registry.corp:5000", False),
        ("REGISTRY.corp.", 443, " other.test , Registry.Corp ", True),
        ("10.1.2.3", 443, "10.0.0.0/8", True),
        ("10.1.2.3", 443, "10.1.2.3", True),
        ("11.1.2.3", 443, "10.0.0.0/8", False),
        ("::1", 443, "::1", True),
        ("[::1]", 5000, "[::1]:5000", True),
        ("127.0.0.1", 80, "localhost", False),  # names are not resolved
        ("registry.corp", 443, "*.corp", True),  # containerd's (Go's) wildcard form
        ("a.registry.corp", 443, "other.test,*.registry.corp:443", True),
        ("registry.corpx", 443, "*.corp", False),
    ],
)
def test_no_proxy_follows_curls_rules(host: str, port: int, no_proxy: str, expected: bool) -> None:
    assert bypassed(host, port, no_proxy) is expected


def test_the_registry_key_wins_over_the_environment() -> None:
    environment = {"https": "http://env:3128", "http": "http://env:3128", "no": "skip.test"}
    target = URL("https://r.test/v2/")
    assert Egress(None, environment).proxy_for(target) == URL("http://env:3128")
    assert Egress(None, environment).proxy_for(URL("https://skip.test/v2/")) is None
    assert Egress(None, {"http": "http://env:3128"}).proxy_for(target) is None  # by scheme
    assert Egress("http://own:8080", environment).proxy_for(URL("https://skip.test/")) == URL(
        "http://own:8080"
    )
    assert Egress(DIRECT, environment).proxy_for(target) is None
    assert Egress().proxy_for(target) is None


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("proxy.corp:3128", "http://proxy.corp:3128"),
        ("http://proxy.corp:3128/", "http://proxy.corp:3128"),
        ("http://user:s3cret@proxy.corp:3128", "http://user:s3cret@proxy.corp:3128"),
        ("http://[::1]:3128", "http://[::1]:3128"),
    ],
)
def test_proxy_urls_are_normalised(value: str, expected: str) -> None:
    assert proxy_url(value, "k") == expected


@pytest.mark.parametrize(
    "value",
    [
        "https://proxy.corp:3128",
        "socks5://proxy.corp:1080",
        "http://proxy.corp:3128/path",
        "http://proxy.corp:3128/?q=1",
        "http://",
        "http://user:s3cret@proxy.corp:99999",
        "http://us%3Aer:s3cret@proxy.corp:3128",  # no ':' in a Basic user name
    ],
)
def test_unusable_proxy_urls_are_refused_without_echoing_a_password(value: str) -> None:
    with pytest.raises(ConfigError) as info:
        proxy_url(value, "registries.r.test.proxy")
    assert info.value.key == "registries.r.test.proxy"
    assert "s3cret" not in str(info.value)


def test_the_environment_is_read_as_curl_and_containerd_read_it() -> None:
    with pytest.raises(ConfigError) as info:
        proxy_environment({"HTTPS_PROXY": "https://user:s3cret@proxy.corp:3128"})
    assert info.value.key == "$HTTPS_PROXY"
    assert "s3cret" not in str(info.value)
    assert proxy_environment({"HTTPS_PROXY": "proxy.corp:3128"}) == (  # a bare host:port
        ("https", "http://proxy.corp:3128"),
    )
    environ = {"HTTP_PROXY": "http://upper:1", "http_proxy": "http://lower:2", "NO_PROXY": "a,b"}
    assert proxy_environment(environ) == (("http", "http://lower:2"), ("no", "a,b"))
    assert proxy_environment({"HTTPS_PROXY": "http://upper:1", "https_proxy": ""}) == ()
    assert proxy_environment({"PATH": "/bin", "FTP_PROXY": "http://x:1"}) == ()


async def test_registry_proxy_carries_blobs_manifests_and_token_requests(
    fake: FakeRegistry,
    tokens: TokenService,
    start_daemon: StartDaemon,
    http: aiohttp.ClientSession,
) -> None:
    fake.gate = tokens
    layer = os.urandom(300_000)
    manifest, (_, layer_digest) = fake.add_image("team/app", "1", [layer])
    proxy = ForwardProxy(credentials=("egress", "pw"))
    async with running_proxy(proxy):
        own = proxy.url.replace("http://", "http://egress:pw@")
        async with with_settings(start_daemon, fake, proxy=own) as daemon:
            manifest_url = f"{daemon.mirror_url}/v2/team/app/manifests/1?ns=fake.test"
            async with http.get(manifest_url) as resp:
                assert resp.status == 200
                assert resp.headers["Docker-Content-Digest"] == manifest
            async with http.get(blob_url(daemon, layer_digest)) as resp:
                assert await resp.read() == layer
    registry, token_service = URL(fake.url), URL(tokens.url)
    assert proxy.targets() == {
        f"{registry.host}:{registry.port}",
        f"{token_service.host}:{token_service.port}",
    }
    assert proxy.refused == 0
    assert tokens.requests  # the token really was fetched (through the proxy)


async def test_https_proxy_from_the_environment_tunnels_with_connect(
    pki: dict[str, Any],
    start_daemon: StartDaemon,
    http: aiohttp.ClientSession,
) -> None:
    registry = FakeRegistry()
    digest = registry.add_blob(b"through a tunnel")
    async with (
        https(registry, server_context(pki, mutual=False)) as url,
        running_proxy(ForwardProxy()) as proxy,
        start_daemon(
            {"tls.test": [url]},
            proxy_environment={"HTTPS_PROXY": proxy.url},
            **{"registry:tls.test": {"ca_file": str(pki["ca_file"])}},
        ) as daemon,
        http.get(f"{daemon.mirror_url}/v2/team/app/blobs/{digest}?ns=tls.test") as resp,
    ):
        assert resp.status == 200
        assert await resp.read() == b"through a tunnel"
    assert proxy.seen == [("CONNECT", f"127.0.0.1:{URL(url).port}")]


async def test_no_proxy_and_proxy_direct_connect_directly(
    fake: FakeRegistry,
    start_daemon: StartDaemon,
    http: aiohttp.ClientSession,
) -> None:
    first, second = fake.add_blob(b"no_proxy"), fake.add_blob(b"direct")
    async with running_proxy(ForwardProxy()) as proxy:
        environment = {"HTTP_PROXY": proxy.url, "NO_PROXY": "example.test,127.0.0.1"}
        async with (
            start_daemon(
                {"fake.test": [fake.url]},
                proxy_environment=environment,
                **{"registry:fake.test": {"redirect_private": True}},  # a loopback CDN
            ) as daemon,
            http.get(blob_url(daemon, first)) as resp,
        ):
            assert await resp.read() == b"no_proxy"
        async with (
            start_daemon(
                {"fake.test": [fake.url]},
                proxy_environment={"HTTP_PROXY": proxy.url},
                **{"registry:fake.test": {"proxy": "direct"}},
            ) as daemon,
            http.get(blob_url(daemon, second)) as resp,
        ):
            assert await resp.read() == b"direct"
    assert proxy.seen == []


@pytest.mark.parametrize("tunnel", [False, True])
async def test_a_proxy_asking_for_credentials_is_a_502_that_says_so(
    pki: dict[str, Any],
    start_daemon: StartDaemon,
    http: aiohttp.ClientSession,
    tunnel: bool,
) -> None:
    registry = FakeRegistry()
    digest = registry.add_blob(b"never reached")
    proxy = ForwardProxy(credentials=("egress", "pw"))
    async with running_proxy(proxy):
        extra: dict[str, Any] = {"proxy": proxy.url}
        async with (
            upstream(registry, pki, tunnel, extra) as url,
            start_daemon({"r.test": [url]}, **{"registry:r.test": extra}) as daemon,
            http.get(f"{daemon.mirror_url}/v2/team/app/blobs/{digest}?ns=r.test") as resp,
        ):
            assert resp.status == 502
            message = (await resp.json())["errors"][0]["message"]
    assert "407 Proxy Authentication Required" in message
    assert "http://user:password@host:port" in message
    assert proxy.refused >= 1
    assert sum(registry.requests.values()) == 0


async def test_an_unreachable_proxy_is_a_502_naming_it(
    fake: FakeRegistry,
    start_daemon: StartDaemon,
    http: aiohttp.ClientSession,
) -> None:
    digest = fake.add_blob(b"never reached")
    dead = URL(refused_url())
    async with (
        with_settings(start_daemon, fake, proxy=str(dead)) as daemon,
        http.get(blob_url(daemon, digest)) as resp,
    ):
        assert resp.status == 502
        message = (await resp.json())["errors"][0]["message"]
    assert f"cannot connect to the forward proxy {dead.host}:{dead.port}" in message
    assert sum(fake.requests.values()) == 0


@pytest.mark.parametrize("tunnel", [False, True])
@pytest.mark.parametrize("password", ["p@ss:w/rd", "pässwörd", "p€ss"])
async def test_proxy_passwords_are_sent_as_containerd_sends_them(
    pki: dict[str, Any],
    start_daemon: StartDaemon,
    http: aiohttp.ClientSession,
    password: str,
    tunnel: bool,
) -> None:
    # Percent-encoded in the URL; sent as the UTF-8 bytes (Go's net/url, curl), so a
    # HTTPS_PROXY that works for containerd works here too.
    registry = FakeRegistry()
    digest = registry.add_blob(b"through an authenticated proxy")
    proxy = ForwardProxy(credentials=("egress", password))
    extra: dict[str, Any] = {}
    async with running_proxy(proxy), upstream(registry, pki, tunnel, extra) as url:
        extra["proxy"] = str(URL(proxy.url).with_user("egress").with_password(password))
        async with (
            start_daemon({"r.test": [url]}, **{"registry:r.test": extra}) as daemon,
            http.get(f"{daemon.mirror_url}/v2/team/app/blobs/{digest}?ns=r.test") as resp,
        ):
            body = await resp.read()
            assert resp.status == 200, body
            assert body == b"through an authenticated proxy"
    assert proxy.refused == 0
    # Through the proxy, not directly: tunnelled for https, forwarded for http.
    assert proxy.seen == [("CONNECT" if tunnel else "GET", f"{URL(url).host}:{URL(url).port}")]


async def test_a_redirect_to_a_cdn_that_no_proxy_names_goes_direct(
    fake: FakeRegistry,
    start_daemon: StartDaemon,
    http: aiohttp.ClientSession,
) -> None:
    data = os.urandom(50_000)
    digest = fake.add_blob(data)
    async with serving(Cdn({digest: data})) as cdn, running_proxy(ForwardProxy()) as proxy:
        cdn_host = URL(cdn.url).host
        assert cdn_host != URL(fake.url).host  # the CDN listens on another loopback address
        fake.faults.redirect_location = f"{cdn.url}/cdn/{digest}"
        environment = {"HTTP_PROXY": proxy.url, "NO_PROXY": f"{cdn_host}"}
        async with (
            start_daemon(
                {"fake.test": [fake.url]},
                proxy_environment=environment,
                **{"registry:fake.test": {"redirect_private": True}},  # a loopback CDN
            ) as daemon,
            http.get(blob_url(daemon, digest)) as resp,
        ):
            assert resp.status == 200
            assert await resp.read() == data
    registry = URL(fake.url)
    assert proxy.targets() == {f"{registry.host}:{registry.port}"}  # the CDN: direct
    assert [path for path, _ in cdn.seen] == [f"/cdn/{digest}"]


async def test_serve_takes_the_proxy_from_its_environment(
    fake: FakeRegistry, tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    # Only the CLI reads the environment: this is the path from HTTP_PROXY to a request.
    digest = fake.add_blob(b"via the environment")
    async with running_proxy(ForwardProxy()) as proxy:
        daemon = CachesvcProcess(
            tmp_path / "cachesvc", {"fake.test": [fake.url]}, env={"http_proxy": proxy.url}
        )
        await asyncio.to_thread(daemon.start)  # the loop keeps serving proxy and registry
        try:
            url = f"{daemon.mirror_url}/v2/team/app/blobs/{digest}?ns=fake.test"
            async with http.get(url) as resp:
                assert await resp.read() == b"via the environment"
        finally:
            await asyncio.to_thread(daemon.stop)
    registry = URL(fake.url)
    assert proxy.targets() == {f"{registry.host}:{registry.port}"}
