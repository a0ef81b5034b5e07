"""Which addresses a registry's requests may connect to (redirect targets, token services).

A registry's endpoints (and its forward proxy) are the operator's choice: any address.
Every other host, the ones upstream names itself (a redirect ``Location``, a token
``realm``), may be reached only when *every* address it resolves to is public, or, for
loopback and private ranges (127/8, 10/8, 172.16/12, 192.168/16, 100.64/10, ::1,
fc00::/7), when the registry sets ``redirect_private: true``. Link-local (169.254/16 with
the cloud metadata address, fe80::/10), unspecified (0.0.0.0, ::) and multicast addresses
are never reached, whatever the configuration: a registry must not be able to make
cachesvc fetch its node's cloud credentials, or itself.

The rule is applied where the connection is made, not beside it: each registry's
connector resolves through a ``GuardedResolver``, so the addresses checked are the ones
connected to (a DNS answer that changes between a check and the connect, DNS rebinding,
has no gap to use). aiohttp does not resolve IP literals, so ``literal_refusal`` checks
those before the request. Through a forward proxy the proxy resolves names; only
literals are checked then (docs/upstream.md says so).
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterable

from aiohttp import DefaultResolver
from aiohttp.abc import AbstractResolver, ResolveResult
from yarl import URL

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
_METADATA = ipaddress.ip_address("169.254.169.254")
_SHARED = ipaddress.ip_network("100.64.0.0/10")  # carrier-grade NAT: private in practice
_THIS_NETWORK = ipaddress.ip_network("0.0.0.0/8")  # "this host" on Linux: never a registry


def never(address: Address) -> bool:
    """Link-local (the metadata address included), unspecified, multicast, reserved."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return never(address.ipv4_mapped)
    if address == _METADATA or address.is_link_local or address.is_unspecified:
        return True
    if isinstance(address, ipaddress.IPv4Address):
        return address.is_multicast or address.is_reserved or address in _THIS_NETWORK
    return address.is_multicast  # (IPv6's "reserved" ::/8 holds ::1, which is loopback)


def private(address: Address) -> bool:
    """Loopback or a private range (reachable only with ``redirect_private``)."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return private(address.ipv4_mapped)
    return address.is_loopback or address.is_private or address in _SHARED


def refusal(host: str, addresses: Iterable[Address], *, allow_private: bool) -> str | None:
    """Why ``host`` (resolving to ``addresses``) must not be connected to; None: it may."""
    for address in addresses:
        if never(address):
            return f"{host} resolves to {address}, which cachesvc never connects to for a registry"
        if private(address) and not allow_private:
            return (
                f"{host} resolves to the private address {address}; set 'redirect_private: "
                "true' on the registry to allow redirects and token services there"
            )
    return None


def literal_refusal(
    host: str | None, trusted: frozenset[str], *, allow_private: bool
) -> str | None:
    """The rule for a URL host that is an IP literal (aiohttp connects to it unresolved)."""
    name = (host or "").strip("[]").lower()
    if name in trusted:
        return None
    try:
        address = ipaddress.ip_address(name.split("%", 1)[0])
    except ValueError:
        return None  # a name: the resolver decides
    return refusal(name, [address], allow_private=allow_private)


class AddressRefused(OSError):
    """A host whose addresses the rule refuses (aiohttp reports it as a connect error)."""


class GuardedResolver(AbstractResolver):
    """Resolves like aiohttp's default, then applies the rule to hosts not ``trusted``."""

    def __init__(
        self,
        trusted: frozenset[str],
        *,
        allow_private: bool,
        inner: AbstractResolver | None = None,
    ) -> None:
        # ``inner``: the daemon always uses aiohttp's default (the system resolver, so
        # /etc/resolv.conf and nsswitch decide); tests put a resolver aimed at their own
        # dnsmasq underneath, since getaddrinfo cannot be pointed at a test server.
        self._inner = inner if inner is not None else DefaultResolver()
        self._trusted = trusted
        self._allow_private = allow_private
        self.last_refusal: str | None = None

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        """The addresses of ``host``, all of them allowed, or ``AddressRefused``."""
        results = await self._inner.resolve(host, port, family)
        if host.lower() in self._trusted:
            return results
        addresses = [ipaddress.ip_address(str(r["host"]).split("%", 1)[0]) for r in results]
        problem = refusal(host, addresses, allow_private=self._allow_private)
        if problem is not None:
            self.last_refusal = problem
            raise AddressRefused(problem)
        return results

    async def close(self) -> None:
        """Close the resolver underneath."""
        await self._inner.close()


def trusted_hosts(urls: Iterable[str]) -> frozenset[str]:
    """The lower-cased host names of ``urls`` (endpoints, proxies)."""
    hosts = {(URL(str(u)).host or "").strip("[]").lower() for u in urls if u}
    return frozenset(h for h in hosts if h)
