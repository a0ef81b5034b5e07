"""The HTTP client sessions of one registry, built with the protections every request needs.

Per registry, not shared, because what a connection may be used for depends on the
registry: its endpoints' hosts are trusted and its ``redirect_private`` decides where
redirects and token services may go (``addresses``), and a pooled connection opened
under one registry's rule is never reused under another's. Each connector resolves
through a ``GuardedResolver`` (no connector DNS cache: every new connection is checked on
the addresses it connects to).

Two sessions per registry, because of response desync: aiohttp parses whatever arrives
on an idle keep-alive connection as the *next* response, so a registry (or anything
sharing its host:port) that writes an extra response after a complete one decides what
the next request on that connection gets, cached under that request's name. aiohttp has
no public hook to see those bytes, so:

- ``single``: a connection per request (``force_close``), for every answer read whole
  and kept by name (manifests, tags, tag lists, referrers, HEADs, token requests): no
  connection is ever reused, so no stray bytes can be taken as an answer. It costs a TCP
  (and TLS) handshake per such request (measured in docs/upstream.md).
- ``pooled``: kept-alive connections for blob GETs, whose bytes are checked against the
  digest they are named by before anyone gets all of them, so desynced bytes can never be
  served as a blob (and aiohttp already closes a connection with bytes left after the
  response it read).
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass

import aiohttp

from cachesvc.config import DIRECT, RegistryConfig
from cachesvc.upstream.addresses import GuardedResolver, trusted_hosts
from cachesvc.upstream.egress import Egress


def trusted_for(registry: RegistryConfig, egress: Egress) -> frozenset[str]:
    """The hosts of the registry's endpoints and of its forward proxies."""
    proxies: list[str] = []
    if egress.configured not in (None, DIRECT):
        proxies.append(str(egress.configured))
    elif egress.configured is None:
        environment = egress.environment or {}
        proxies += [environment.get("http", ""), environment.get("https", "")]
    return trusted_hosts([*registry.endpoints, *proxies])


@dataclass(frozen=True, slots=True)
class RegistrySessions:
    """One registry's two sessions (see the module docstring)."""

    single: aiohttp.ClientSession  # a fresh connection per request
    pooled: aiohttp.ClientSession  # kept-alive connections, for blob GETs only

    async def close(self) -> None:
        """Close both (their connectors with them)."""
        await self.single.close()
        await self.pooled.close()


def registry_sessions(registry: RegistryConfig, egress: Egress) -> RegistrySessions:
    """The sessions every request for ``registry`` goes through (see the module docstring)."""
    return RegistrySessions(
        single=_session(registry, egress, force_close=True),
        pooled=_session(registry, egress, force_close=False),
    )


def _session(
    registry: RegistryConfig, egress: Egress, *, force_close: bool
) -> aiohttp.ClientSession:
    resolver = GuardedResolver(
        trusted_for(registry, egress), allow_private=registry.redirect_private
    )
    connector = aiohttp.TCPConnector(
        limit=256,
        limit_per_host=64,
        ssl=ssl.create_default_context(),
        resolver=resolver,
        use_dns_cache=False,
        force_close=force_close,
    )
    return exact_bytes_session(connector)


def exact_bytes_session(connector: aiohttp.BaseConnector) -> aiohttp.ClientSession:
    """A session over ``connector`` that hands bodies on exactly as sent (upstream
    registries and cluster peers alike), in large reads, ignoring the environment."""
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
