"""The member set of the cluster: a static list or the A/AAAA records of a DNS name.

Kubernetes is the coordinator: the DaemonSet's headless Service has one record per ready pod,
and every node re-resolves it every ``cluster.refresh``. Rules (issue 13):

- This daemon (``cluster.advertise``) is always a member, whatever the source says.
- A failed lookup or an empty answer keeps the last good member set: never an empty ring,
  and a DNS outage does not move every key's owner at once.
- A name with only A (or only AAAA) records is normal; an error for one record type while
  the other answered (a resolver that refuses or NXDOMAINs AAAA) is not a failure.

Use a single-stack Service: with both A and AAAA records a pod would be two members.

Time comes from an injected monotonic ``clock``, so tests advance it instead of sleeping.
Counts and state are plain attributes for the metrics and ``GET /admin/v1/cluster``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Protocol

import dns.asyncresolver
import dns.exception
import dns.nameserver
import dns.rdatatype
import dns.resolver

from cachesvc.config.cluster import ClusterConfig, DnsName
from cachesvc.config.peeraddress import PeerAddress
from cachesvc.errors import CachesvcError

__all__ = ["DnsPeers", "LookupFailed", "MemberSource", "Membership", "StaticPeers", "source_for"]

log = logging.getLogger("cachesvc.cluster")

Clock = Callable[[], float]
"""Monotonic seconds (``time.monotonic`` in the daemon, a settable value in tests)."""


class LookupFailed(CachesvcError):
    """A member source could not tell who the members are; the last good set stays."""


class MemberSource(Protocol):
    """Where members come from."""

    async def lookup(self) -> frozenset[PeerAddress]:
        """The members now, never empty; raise :class:`LookupFailed` when unknown."""
        ...


class StaticPeers:
    """``cluster.peers``: the same members every time."""

    def __init__(self, peers: Iterable[PeerAddress]) -> None:
        self._peers = frozenset(peers)

    async def lookup(self) -> frozenset[PeerAddress]:
        """The configured list."""
        if not self._peers:
            raise LookupFailed("the static peer list is empty")
        return self._peers


class DnsPeers:
    """``cluster.peers_dns``: every A and AAAA record of ``name``, with its port.

    ``servers`` empty: the system resolver (``/etc/resolv.conf``); else exactly those, in
    order. dnspython keeps no cache here, so every lookup asks the resolver (which honours
    the records' TTL itself).
    """

    def __init__(
        self, name: DnsName, servers: Sequence[PeerAddress] = (), *, timeout: float = 2.0
    ) -> None:
        self._name = name
        self._servers = tuple(servers)
        self._timeout = timeout
        self._resolver: dns.asyncresolver.Resolver | None = None

    async def lookup(self) -> frozenset[PeerAddress]:
        """Ask for A and AAAA at once; the union of what answered, or :class:`LookupFailed`."""
        resolver = self._get_resolver()
        answers = await asyncio.gather(
            self._addresses(resolver, dns.rdatatype.A),
            self._addresses(resolver, dns.rdatatype.AAAA),
        )
        members = frozenset(address for found, _ in answers for address in found)
        if not members:
            problems = "; ".join(problem for _, problem in answers)
            raise LookupFailed(f"{self._name.name}: no member addresses ({problems})")
        return members

    def _get_resolver(self) -> dns.asyncresolver.Resolver:
        if self._resolver is None:
            try:
                resolver = dns.asyncresolver.Resolver(configure=not self._servers)
            except dns.exception.DNSException as exc:  # no usable /etc/resolv.conf
                raise LookupFailed(f"no system resolver: {exc}") from None
            if self._servers:
                resolver.nameservers = [
                    dns.nameserver.Do53Nameserver(s.host, s.port) for s in self._servers
                ]
            resolver.lifetime = self._timeout
            self._resolver = resolver
        return self._resolver

    async def _addresses(
        self, resolver: dns.asyncresolver.Resolver, rdtype: dns.rdatatype.RdataType
    ) -> tuple[list[PeerAddress], str]:
        """One record type's members and, when there are none, why (for ``last_error``)."""
        kind = dns.rdatatype.to_text(rdtype)
        try:
            answer = await resolver.resolve(self._name.name + ".", rdtype, search=False)
        except dns.resolver.NoAnswer:
            return [], f"no {kind} records"
        except dns.resolver.NXDOMAIN:
            return [], f"{kind}: no such name"
        except dns.resolver.NoNameservers:
            return [], f"{kind}: every server refused or failed"
        except dns.exception.Timeout:
            return [], f"{kind}: timed out after {self._timeout:g}s"
        except (dns.exception.DNSException, OSError) as exc:
            return [], f"{kind}: {type(exc).__name__}: {exc}"
        found = [PeerAddress.of(rdata.address, self._name.port) for rdata in answer]
        return found, ""


def source_for(config: ClusterConfig) -> MemberSource:
    """The member source ``config`` names (``peers_dns`` or the static ``peers``)."""
    if config.peers_dns is not None:
        return DnsPeers(config.peers_dns, config.dns_servers)
    return StaticPeers(config.peers)


class Membership:
    """The current member set (self included) and how it was last refreshed.

    Attributes for metrics and the admin API: ``lookups`` and ``failures`` (counts of
    lookups and of those that kept the last set), ``last_error`` (None after a success),
    ``changes`` (how often the set changed).
    """

    def __init__(
        self,
        self_address: PeerAddress,
        source: MemberSource,
        *,
        refresh: float,
        clock: Clock = time.monotonic,
        on_change: Callable[[frozenset[PeerAddress]], None] | None = None,
    ) -> None:
        self.self_address = self_address
        self._source = source
        self._refresh = refresh
        self._clock = clock
        self._on_change = on_change
        self._members = frozenset({self_address})
        self._confirmed_at = clock()  # the set's last confirmation: start, or a good lookup
        self._next_at = self._confirmed_at  # the first refresh is due at once
        self.lookups = 0
        self.failures = 0
        self.changes = 0
        self.last_error: str | None = None

    @property
    def members(self) -> frozenset[PeerAddress]:
        """Every member, self included; never empty."""
        return self._members

    def sorted_members(self) -> list[str]:
        """The members as advertised (``host:port``), sorted, for JSON."""
        return [str(m) for m in sorted(self._members)]

    def age(self) -> float:
        """Seconds since the member set was last confirmed by a lookup (or since start)."""
        return max(0.0, self._clock() - self._confirmed_at)

    def seconds_until_due(self) -> float:
        """Seconds until the next lookup should run (0 when it is due)."""
        return max(0.0, self._next_at - self._clock())

    async def refresh(self) -> bool:
        """Look the members up now; True when the set changed. Failures keep the last set."""
        self.lookups += 1
        self._next_at = self._clock() + self._refresh
        try:
            found = await self._source.lookup()
        except LookupFailed as exc:
            self.failures += 1
            if self.last_error is None:  # log the start of an outage, not every retry
                log.warning("cluster members: lookup failed, keeping %d members: %s",
                            len(self._members), exc)  # fmt: skip
            self.last_error = str(exc)
            return False
        if not found:  # a source breaking its contract is still no reason to empty the ring
            self.failures += 1
            self.last_error = "empty answer"
            return False
        self.last_error = None
        self._confirmed_at = self._clock()
        members = found | {self.self_address}
        if members == self._members:
            return False
        self._members = members
        self.changes += 1
        log.info("cluster members changed", extra={"fields": {"members": self.sorted_members()}})
        if self._on_change is not None:
            self._on_change(members)
        return True

    async def refresh_if_due(self) -> bool:
        """:meth:`refresh` when ``refresh`` seconds have passed since the last lookup."""
        if self.seconds_until_due() > 0:
            return False
        return await self.refresh()

    async def run(self, sleep: Callable[[float], Awaitable[None]] = asyncio.sleep) -> None:
        """Refresh whenever due, until cancelled (the daemon runs this as a task)."""
        while True:
            await self.refresh_if_due()
            await sleep(self.seconds_until_due())
