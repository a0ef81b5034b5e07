"""Client CIDR allow list (``clients.allow``): who may use the mirror API.

The TCP peer address is the only truth (a header such as ``X-Forwarded-For`` is the client's
word). A dual-stack listener reports IPv4 clients as IPv4-mapped IPv6 (``::ffff:10.1.2.3``),
so those are matched as the IPv4 address they are (and as written, for a
``::ffff:0:0/96``-style entry); a link-local zone (``fe80::1%eth0``) is
dropped. A network with host bits set (``10.0.0.1/8``) is refused rather than silently
widened, since it usually means a typo.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass

from cachesvc.errors import ConfigError

__all__ = ["ClientAllowList", "compile_clients", "peer_address"]

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address


def peer_address(host: str) -> Address | None:
    """The address a socket peer name stands for, IPv4-mapped unwrapped; None if not an IP."""
    try:
        address = ipaddress.ip_address(host.partition("%")[0])
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def _network(text: object, key: str) -> Network:
    if not isinstance(text, str) or not text.strip():
        raise ConfigError(key, "a client network must be a CIDR string such as 10.0.0.0/8")
    try:
        return ipaddress.ip_network(text.strip(), strict=True)
    except ValueError as exc:
        try:
            widened = ipaddress.ip_network(text.strip(), strict=False)
        except ValueError:
            raise ConfigError(key, f"{text!r} is not an IPv4 or IPv6 network ({exc})") from exc
        raise ConfigError(key, f"{text!r} has host bits set; did you mean {widened}?") from exc


@dataclass(frozen=True, slots=True)
class ClientAllowList:
    """Compiled networks; ``networks`` in config order."""

    networks: tuple[Network, ...]

    def allows(self, host: str) -> bool:
        """Whether the peer ``host`` (from the transport's ``peername``) is in a network."""
        address = peer_address(host)
        if address is None:
            return False
        raw = ipaddress.ip_address(host.partition("%")[0])
        candidates = {address, raw}  # a ::ffff:0:0/96 network names mapped peers as written
        return any(a.version == n.version and a in n for a in candidates for n in self.networks)


def compile_clients(cidrs: Sequence[object], key: str) -> ClientAllowList:
    """Parse ``cidrs`` (config key ``key``); ``ConfigError`` names the bad entry's index."""
    if isinstance(cidrs, str):
        raise ConfigError(key, "must be a list of networks, not one string")
    return ClientAllowList(tuple(_network(c, f"{key}[{i}]") for i, c in enumerate(cidrs)))
