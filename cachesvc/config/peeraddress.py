"""How cluster members are named: ``PeerAddress``, an IP literal and a port.

A member's address is its identity in the ring: every node hashes ``str(address)`` to rank
members, so two nodes must spell one member the same way. That is why members are IP
literals only (DNS answers and ``cluster.advertise`` are compared as IPs; a host name in
``cluster.advertise`` would make a node appear twice, once by name and once by its A record)
and why IPv6 literals are normalized (``::0001`` and ``::1`` are one member).
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

__all__ = ["PeerAddress", "split_host_port"]


@dataclass(frozen=True, slots=True, order=True)
class PeerAddress:
    """A cluster member (or a DNS server): normalized IP literal and TCP/UDP port."""

    host: str
    port: int

    @classmethod
    def of(cls, host: str, port: int) -> PeerAddress:
        """The normalized address; ``ValueError`` when ``host`` is not an IP or ``port`` bad."""
        if not 1 <= port <= 65535:
            raise ValueError(f"port out of range: {port}")
        return cls(str(ipaddress.ip_address(host.strip("[]"))), port)

    @classmethod
    def parse(cls, text: str) -> PeerAddress:
        """``"10.0.3.7:5001"`` or ``"[fd00::7]:5001"``; ``ValueError`` when malformed."""
        host, port = split_host_port(text)
        return cls.of(host, port)

    @property
    def is_wildcard(self) -> bool:
        """True for ``0.0.0.0`` and ``::``: a bind address, never a member's address."""
        return ipaddress.ip_address(self.host).is_unspecified

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


def split_host_port(text: str) -> tuple[str, int]:
    """``"host:port"`` into its parts (brackets removed); ``ValueError`` when malformed.

    The host is returned as written (it may be a DNS name); only the port is checked here.
    """
    host, sep, port_text = text.rpartition(":")
    if not sep or not host or not port_text.isdigit():
        raise ValueError(f"expected 'host:port', got {text!r}")
    if host.startswith("[") != host.endswith("]"):
        raise ValueError(f"unbalanced brackets in {text!r}")
    if host.startswith("["):
        host = host[1:-1]
    elif ":" in host:
        raise ValueError(f"an IPv6 address needs brackets, as in '[{host}]:{port_text}'")
    port = int(port_text)
    if not 1 <= port <= 65535:
        raise ValueError(f"port out of range in {text!r}")
    return host, port
