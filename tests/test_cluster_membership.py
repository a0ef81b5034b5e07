"""Cluster membership: self always in, last good set kept, DNS followed (real dnsmasq)."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from cachesvc.cluster.membership import (
    DnsPeers,
    LookupFailed,
    Membership,
    StaticPeers,
    source_for,
)
from cachesvc.cluster.ranking import BlobKey, owner
from cachesvc.config.cluster import DnsName, parse_cluster
from cachesvc.config.peeraddress import PeerAddress
from tests.peers.dns import Dnsmasq, free_udp_and_tcp_port

SELF = PeerAddress.of("127.0.0.2", 5001)
NAME = "peers.cluster.test"


class Clock:
    """A monotonic clock that moves only when a test says so."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Switchable:
    """A member source whose next answer a test sets: members, or a failure."""

    def __init__(self, *members: PeerAddress) -> None:
        self.answer: frozenset[PeerAddress] | LookupFailed = frozenset(members)

    async def lookup(self) -> frozenset[PeerAddress]:
        if isinstance(self.answer, LookupFailed):
            raise self.answer
        return self.answer


def at(host: str) -> PeerAddress:
    return PeerAddress.of(host, 5001)


def digests(n: int) -> list[BlobKey]:
    return [BlobKey("sha256:" + hashlib.sha256(str(i).encode()).hexdigest()) for i in range(n)]


async def test_self_is_a_member_before_and_after_lookups() -> None:
    clock = Clock()
    membership = Membership(SELF, StaticPeers([at("127.0.0.3")]), refresh=10, clock=clock)
    assert membership.members == {SELF}
    assert await membership.refresh()
    assert membership.members == {SELF, at("127.0.0.3")}
    assert membership.sorted_members() == ["127.0.0.2:5001", "127.0.0.3:5001"]
    assert (membership.lookups, membership.failures, membership.changes) == (1, 0, 1)


async def test_refresh_is_due_every_interval_on_the_injected_clock() -> None:
    clock, source = Clock(), Switchable(at("127.0.0.3"))
    membership = Membership(SELF, source, refresh=10, clock=clock)
    assert membership.seconds_until_due() == 0
    assert await membership.refresh_if_due()
    source.answer = frozenset({at("127.0.0.4")})
    clock.now += 9.5
    assert membership.seconds_until_due() == pytest.approx(0.5)
    assert not await membership.refresh_if_due()
    assert membership.members == {SELF, at("127.0.0.3")}
    assert membership.age() == pytest.approx(9.5)
    clock.now += 0.5
    assert await membership.refresh_if_due()
    assert membership.members == {SELF, at("127.0.0.4")}
    assert membership.age() == 0
    assert membership.lookups == 2


async def test_a_failure_or_an_empty_answer_keeps_the_last_good_set() -> None:
    clock, source = Clock(), Switchable(at("127.0.0.3"), at("127.0.0.4"))
    changes: list[frozenset[PeerAddress]] = []
    membership = Membership(SELF, source, refresh=10, clock=clock, on_change=changes.append)
    await membership.refresh()
    good = membership.members
    source.answer = LookupFailed("resolver down")
    clock.now += 10
    assert not await membership.refresh_if_due()
    source.answer = frozenset()
    clock.now += 10
    assert not await membership.refresh_if_due()
    assert membership.members == good
    assert membership.failures == 2
    assert membership.last_error == "empty answer"
    assert membership.age() == 20  # how stale the kept set is
    source.answer = frozenset({at("127.0.0.3")})
    clock.now += 10
    assert await membership.refresh_if_due()
    assert membership.last_error is None
    assert changes == [good, {SELF, at("127.0.0.3")}]


async def test_an_answer_without_self_still_has_self() -> None:
    membership = Membership(SELF, Switchable(at("127.0.0.9")), refresh=1, clock=Clock())
    await membership.refresh()
    assert membership.members == {SELF, at("127.0.0.9")}


async def test_run_refreshes_on_schedule_until_cancelled() -> None:
    clock, source = Clock(), Switchable(at("127.0.0.3"))
    membership = Membership(SELF, source, refresh=7, clock=clock)
    slept: list[float] = []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)
        if len(slept) == 3:
            raise StopAsyncIteration  # stands for the task's cancellation
        clock.now += seconds

    with pytest.raises(StopAsyncIteration):
        await membership.run(sleep)
    assert slept == [7, 7, 7]
    assert membership.lookups == 3


def test_source_for_follows_the_config(tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text("t\n")
    base = {"listen": "127.0.0.2:5001", "token_file": str(token)}
    static = parse_cluster({**base, "peers": ["127.0.0.3:5001"]}, "cluster")
    assert isinstance(source_for(static), StaticPeers)
    dns = parse_cluster({**base, "peers_dns": f"{NAME}:5001"}, "cluster")
    assert isinstance(source_for(dns), DnsPeers)


# --- real DNS: dnsmasq on 127.0.0.1 ----------------------------------------------------------


@pytest.fixture
def dnsmasq(tmp_path: Path) -> Iterator[Dnsmasq]:
    with Dnsmasq(tmp_path / "dns", {NAME: ["127.0.0.2", "127.0.0.3", "127.0.0.4"]}) as server:
        yield server


def dns_membership(server: Dnsmasq, clock: Clock, name: str = NAME) -> Membership:
    source = DnsPeers(DnsName(name, 5001), [PeerAddress.parse(server.server)], timeout=1.0)
    return Membership(SELF, source, refresh=10, clock=clock)


@pytest.mark.peers
async def test_membership_follows_added_and_removed_records(dnsmasq: Dnsmasq) -> None:
    clock = Clock()
    membership = dns_membership(dnsmasq, clock)
    assert await membership.refresh()
    first = membership.members
    assert first == {at("127.0.0.2"), at("127.0.0.3"), at("127.0.0.4")}
    # The other type (AAAA) is REFUSED by this dnsmasq: normal for an A-only Service.
    assert membership.last_error is None
    owners = {key: owner(key, first) for key in digests(300)}

    dnsmasq.set_records({NAME: ["127.0.0.2", "127.0.0.4", "127.0.0.5"]})  # .3 left, .5 came
    clock.now += 10
    assert await membership.refresh_if_due()
    now = membership.members
    assert now == {at("127.0.0.2"), at("127.0.0.4"), at("127.0.0.5")}
    moved = {key for key, was in owners.items() if owner(key, now) != was}
    assert moved
    # Only keys of the member that left, or won by the one that came, changed owner.
    for key in moved:
        assert owners[key] == at("127.0.0.3") or owner(key, now) == at("127.0.0.5")


@pytest.mark.peers
async def test_a_dns_outage_keeps_the_last_members(dnsmasq: Dnsmasq) -> None:
    clock = Clock()
    membership = dns_membership(dnsmasq, clock)
    await membership.refresh()
    before = membership.members
    dnsmasq.stop()
    clock.now += 10
    assert not await membership.refresh_if_due()
    assert membership.members == before
    assert membership.failures == 1
    assert membership.last_error is not None
    assert NAME in membership.last_error
    assert membership.age() == 10


@pytest.mark.peers
async def test_records_removed_entirely_keep_the_last_members(dnsmasq: Dnsmasq) -> None:
    """A Service with no ready pods (or a deleted one) is an empty answer: keep the last set."""
    clock = Clock()
    membership = dns_membership(dnsmasq, clock)
    await membership.refresh()
    before = membership.members
    dnsmasq.set_records({"other.cluster.test": ["127.0.0.9"]})
    clock.now += 10
    assert not await membership.refresh_if_due()
    assert membership.members == before
    assert membership.last_error is not None


@pytest.mark.peers
@pytest.mark.parametrize("local_domain", [None, "cluster.test"], ids=["refused", "authoritative"])
async def test_names_with_only_a_or_only_aaaa_records(tmp_path: Path, local_domain: str | None) -> None:
    """Without ``--local`` dnsmasq REFUSES the missing type; with it, answers NODATA."""
    records = {"v4.cluster.test": ["127.0.0.3"], "v6.cluster.test": ["fd00::3", "::1"]}
    with Dnsmasq(tmp_path / "dns", records, local_domain=local_domain) as server:
        v4 = dns_membership(server, Clock(), "v4.cluster.test")
        v6 = dns_membership(server, Clock(), "v6.cluster.test")
        assert await v4.refresh()
        assert await v6.refresh()
    assert v4.members == {SELF, at("127.0.0.3")}
    assert v6.members == {SELF, PeerAddress.of("fd00::3", 5001), PeerAddress.of("::1", 5001)}
    assert v4.last_error is None
    assert v6.last_error is None


@pytest.mark.peers
async def test_an_unknown_name_is_a_failure_not_an_empty_ring(tmp_path: Path) -> None:
    with Dnsmasq(tmp_path / "dns", {NAME: ["127.0.0.3"]}, local_domain="cluster.test") as server:
        membership = dns_membership(server, Clock(), "missing.cluster.test")
        assert not await membership.refresh()
    assert membership.members == {SELF}
    assert membership.last_error is not None
    assert "no such name" in membership.last_error


async def test_a_resolver_where_nothing_listens_is_a_failure() -> None:
    source = DnsPeers(DnsName(NAME, 5001), [PeerAddress.of("127.0.0.1", free_udp_and_tcp_port())],
                      timeout=0.5)  # fmt: skip
    membership = Membership(SELF, source, refresh=10, clock=Clock())
    assert not await membership.refresh()
    assert membership.members == {SELF}
    assert membership.failures == 1
