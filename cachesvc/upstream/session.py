"""One HTTP client session per registry, built with the protections every request needs.

Per registry, not shared, because what a connection may be used for depends on the
registry: its endpoints' hosts are trusted and its ``redirect_private`` decides where
redirects and token services may go (``addresses``), and a pooled connection opened
under one registry's rule is never reused under another's. Each session's connector
resolves through a ``GuardedResolver`` (no connector DNS cache: every new connection is
checked on the addresses it connects to) and speaks through a ``GuardedHandler``
(``framing``: unsolicited bytes end the connection).
"""

from __future__ import annotations

import functools
import ssl

import aiohttp

from cachesvc.config import DIRECT, RegistryConfig
from cachesvc.upstream.addresses import GuardedResolver, trusted_hosts
from cachesvc.upstream.egress import Egress
from cachesvc.upstream.framing import GuardedHandler


def trusted_for(registry: RegistryConfig, egress: Egress) -> frozenset[str]:
    """The hosts of the registry's endpoints and of its forward proxies."""
    proxies: list[str] = []
    if egress.configured not in (None, DIRECT):
        proxies.append(str(egress.configured))
    elif egress.configured is None:
        environment = egress.environment or {}
        proxies += [environment.get("http", ""), environment.get("https", "")]
    return trusted_hosts([*registry.endpoints, *proxies])


def registry_session(registry: RegistryConfig, egress: Egress) -> aiohttp.ClientSession:
    """The session every request for ``registry`` goes through (see the module docstring)."""
    resolver = GuardedResolver(
        trusted_for(registry, egress), allow_private=registry.redirect_private
    )
    connector = aiohttp.TCPConnector(
        limit=256,
        limit_per_host=64,
        ssl=ssl.create_default_context(),
        resolver=resolver,
        use_dns_cache=False,
    )
    # aiohttp has no public hook for its protocol class; the attribute is read per connection.
    connector._factory = functools.partial(GuardedHandler, loop=connector._loop)  # type: ignore[assignment]
    return aiohttp.ClientSession(
        connector=connector,
        auto_decompress=False,
        # Exact bytes only: aiohttp would otherwise offer gzip even without decompressing.
        headers={"User-Agent": "cachesvc/0.1", "Accept-Encoding": "identity"},
        trust_env=False,
        # Large reads: fewer, bigger chunks through the fill pipeline (measured: the
        # 64 KiB default caps a 256 MiB cold fill at about half the sha256 rate).
        read_bufsize=4 * 1024 * 1024,
    )
