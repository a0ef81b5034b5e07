"""The address rule for names, against a real DNS server (dnsmasq): a redirect target whose
NAME resolves to loopback or a private range is refused unless ``redirect_private``, and a
link-local one (the cloud metadata address) always, at the address aiohttp connects to.

The daemon resolves through the system resolver (getaddrinfo), which cannot be pointed at a
test server on a free port, so this drives ``GuardedResolver`` (cachesvc.upstream.addresses),
the resolver every registry session uses, with a real resolver underneath: dnspython asking
dnsmasq. The connection test goes through a real aiohttp session to a real local server."""

from __future__ import annotations

import re
import socket
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiohttp
import dns.asyncresolver
import dns.rdatatype
import pytest
from aiohttp import web
from aiohttp.abc import AbstractResolver, ResolveResult

from cachesvc.upstream.addresses import AddressRefused, GuardedResolver
from tests.fakes.registry import serve
from tests.peers.dns import Dnsmasq

pytestmark = [pytest.mark.peers, pytest.mark.timeout(60)]

RECORDS = {
    "cdn.redirect.test": ["127.0.0.1"],
    "minio.redirect.test": ["10.1.2.3"],
    "metadata.redirect.test": ["169.254.169.254"],
    "mixed.redirect.test": ["93.184.216.34", "192.168.1.1"],
    "public.redirect.test": ["93.184.216.34"],
}


class DnsmasqResolver(AbstractResolver):
    """aiohttp's resolver interface over dnspython, asking only the test's dnsmasq."""

    def __init__(self, server: Dnsmasq) -> None:
        self._resolver = dns.asyncresolver.Resolver(configure=False)
        self._resolver.nameservers = ["127.0.0.1"]
        self._resolver.port = server.port

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        answer = await self._resolver.resolve(host, dns.rdatatype.A)
        return [
            ResolveResult(
                hostname=host,
                host=r.address,
                port=port,
                family=socket.AF_INET,
                proto=0,
                flags=socket.AI_NUMERICHOST,
            )
            for r in answer
        ]

    async def close(self) -> None:
        return None


@pytest.fixture(scope="module")
def dnsmasq(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Dnsmasq]:
    server = Dnsmasq(tmp_path_factory.mktemp("dns"), RECORDS)
    server.start()
    try:
        yield server
    finally:
        server.stop()


def guarded(
    server: Dnsmasq, *, allow_private: bool, trusted: frozenset[str] = frozenset()
) -> GuardedResolver:
    return GuardedResolver(trusted, allow_private=allow_private, inner=DnsmasqResolver(server))


async def test_names_resolving_to_private_addresses_need_redirect_private(dnsmasq: Dnsmasq) -> None:
    strict = guarded(dnsmasq, allow_private=False)
    for name in ("cdn.redirect.test", "minio.redirect.test", "mixed.redirect.test"):
        with pytest.raises(AddressRefused, match=re.escape(name)):
            await strict.resolve(name, 443)
    assert [r["host"] for r in await strict.resolve("public.redirect.test", 443)] == [
        "93.184.216.34"
    ]
    relaxed = guarded(dnsmasq, allow_private=True)
    assert [r["host"] for r in await relaxed.resolve("cdn.redirect.test", 443)] == ["127.0.0.1"]
    assert [r["host"] for r in await relaxed.resolve("minio.redirect.test", 443)] == ["10.1.2.3"]
    for resolver in (strict, relaxed):  # link-local: never, whatever the registry says
        with pytest.raises(AddressRefused, match=re.escape("metadata.redirect.test")):
            await resolver.resolve("metadata.redirect.test", 80)
    # The endpoint's own host (trusted) resolves to whatever it is: a registry on the LAN.
    own = guarded(dnsmasq, allow_private=False, trusted=frozenset({"cdn.redirect.test"}))
    assert [r["host"] for r in await own.resolve("cdn.redirect.test", 443)] == ["127.0.0.1"]


@pytest.fixture
async def loopback_server() -> AsyncIterator[int]:
    async def blob(_: web.Request) -> web.Response:
        return web.Response(text="the bytes")

    app = web.Application()
    app.router.add_get("/blob", blob)
    async with serve(app) as url:
        yield int(url.rsplit(":", 1)[1])


async def test_a_connection_to_a_name_on_loopback_is_refused_at_connect(
    dnsmasq: Dnsmasq, loopback_server: int, tmp_path: Path
) -> None:
    url = f"http://cdn.redirect.test:{loopback_server}/blob"
    for allow_private, expected in ((False, None), (True, "the bytes")):
        resolver = guarded(dnsmasq, allow_private=allow_private)
        connector = aiohttp.TCPConnector(resolver=resolver, use_dns_cache=False)
        async with aiohttp.ClientSession(connector=connector) as session:
            if expected is None:
                with pytest.raises(aiohttp.ClientConnectorError):
                    await session.get(url)
                assert resolver.last_refusal is not None
                assert "cdn.redirect.test" in resolver.last_refusal
            else:
                async with session.get(url) as resp:
                    assert await resp.text() == expected
