"""Rendezvous hashing: every node's order agrees, membership changes move little, spread is even."""

from __future__ import annotations

import hashlib
import random
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cachesvc.cluster.ranking import BlobKey, TagKey, owner, ranking
from cachesvc.config.peeraddress import PeerAddress

# No deadline: no timed assertions (the 2 cores are shared). Hypothesis keeps its example
# database in .hypothesis/, which it gitignores itself.
property_test = settings(deadline=None)

ipv4 = st.ip_addresses(v=4).map(str)
members_st = st.sets(
    st.builds(PeerAddress.of, st.one_of(ipv4, st.ip_addresses(v=6).map(str)),
              st.integers(1, 65535)),
    min_size=1, max_size=40,
)  # fmt: skip
digests = st.binary(min_size=1, max_size=64).map(lambda b: "sha256:" + hashlib.sha256(b).hexdigest())
tag_keys = st.builds(
    TagKey, st.sampled_from(["docker.io", "ghcr.io", "127.0.0.1:5001"]),
    st.from_regex(r"[a-z0-9]+(/[a-z0-9]+){0,2}", fullmatch=True),
    st.from_regex(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,20}", fullmatch=True),
    st.frozensets(st.sampled_from([
        "application/vnd.oci.image.index.v1+json",
        "application/vnd.oci.image.manifest.v1+json",
        "application/vnd.docker.distribution.manifest.v2+json",
    ])),
)  # fmt: skip
keys = st.one_of(digests.map(BlobKey), tag_keys)


@property_test
@given(keys, members_st, st.randoms(use_true_random=False))
def test_the_order_of_members_does_not_matter(
    key: BlobKey | TagKey, members: set[PeerAddress], rnd: random.Random
) -> None:
    listed = sorted(members)
    shuffled = list(members)
    rnd.shuffle(shuffled)
    first = ranking(key, listed)
    assert first == ranking(key, shuffled) == ranking(key, shuffled + listed)
    assert set(first) == members
    assert owner(key, shuffled) == first[0]


@property_test
@given(keys, members_st, st.data())
def test_removing_a_member_keeps_everyone_elses_order(
    key: BlobKey | TagKey, members: set[PeerAddress], data: st.DataObject
) -> None:
    gone = data.draw(st.sampled_from(sorted(members)))
    before = ranking(key, members)
    after = ranking(key, members - {gone})
    assert after == tuple(m for m in before if m != gone)


@property_test
@given(keys, members_st, members_st)
def test_adding_a_member_moves_only_keys_it_wins(
    key: BlobKey | TagKey, members: set[PeerAddress], extra: set[PeerAddress]
) -> None:
    newcomer = min(extra - members, default=None)
    if newcomer is None:
        return
    before, after = owner(key, members), owner(key, members | {newcomer})
    assert after in (before, newcomer)
    grown = ranking(key, members | {newcomer})
    assert tuple(m for m in grown if m != newcomer) == ranking(key, members)


def test_only_the_removed_members_keys_move() -> None:
    members = {PeerAddress.of(f"10.0.0.{i}", 5001) for i in range(1, 11)}
    gone = PeerAddress.of("10.0.0.4", 5001)
    keys = [BlobKey(f"sha256:{hashlib.sha256(str(i).encode()).hexdigest()}") for i in range(2000)]
    moved = [k for k in keys if owner(k, members) != owner(k, members - {gone})]
    assert moved  # the removed member owned something
    assert all(owner(k, members) == gone for k in moved)
    assert len(moved) == sum(owner(k, members) == gone for k in keys)


@pytest.mark.parametrize("size", [3, 10, 50])
def test_ownership_is_spread_evenly(size: int) -> None:
    members = [PeerAddress.of(f"10.1.{i // 250}.{i % 250 + 1}", 5001) for i in range(size)]
    n = 400 * size
    counts = Counter(
        owner(BlobKey(f"sha256:{hashlib.sha256(i.to_bytes(4, 'big')).hexdigest()}"), members)
        for i in range(n)
    )
    mean = n / size
    assert set(counts) == set(members)
    # 400 keys per member: a binomial's standard deviation is about 20, so +-25 % is 5 sigma.
    assert all(abs(c - mean) < 0.25 * mean for c in counts.values()), counts


def test_tag_keys_normalize_the_accept_set_and_registry_case() -> None:
    members = [PeerAddress.of(f"10.0.0.{i}", 5001) for i in range(1, 30)]
    a = TagKey("Docker.io", "library/alpine", "3.20", frozenset({"A/x", " b/y"}))
    b = TagKey("docker.io", "library/alpine", "3.20", frozenset({"b/y", "a/x"}))
    assert a.encode() == b.encode()
    assert ranking(a, members) == ranking(b, members)


def test_keys_are_distinct() -> None:
    accept = frozenset({"application/vnd.oci.image.index.v1+json"})
    tags = {
        TagKey("docker.io", "library/alpine", "3.20", accept).encode(),
        TagKey("docker.io", "library/alpine", "3.21", accept).encode(),
        TagKey("docker.io", "library/alpin", "e3.20", accept).encode(),
        TagKey("docker.io", "library/alpine", "3.20", frozenset()).encode(),
        TagKey("ghcr.io", "library/alpine", "3.20", accept).encode(),
        BlobKey("sha256:" + "0" * 64).encode(),
    }
    assert len(tags) == 6


def test_the_ranking_is_part_of_the_protocol() -> None:
    """Pinned orders: a change of hash or key encoding makes old and new nodes disagree."""
    members = [PeerAddress.of("10.0.0.1", 5001), PeerAddress.of("10.0.0.2", 5001),
               PeerAddress.of("fd00::3", 5001), PeerAddress.of("10.0.0.4", 5001)]  # fmt: skip
    blob = BlobKey("sha256:" + hashlib.sha256(b"pinned").hexdigest())
    tag = TagKey("docker.io", "library/alpine", "3.21",
                 frozenset({"application/vnd.oci.image.index.v1+json"}))  # fmt: skip
    assert [str(m) for m in ranking(blob, members)] == [
        "10.0.0.4:5001", "10.0.0.2:5001", "10.0.0.1:5001", "[fd00::3]:5001"
    ]  # fmt: skip
    assert [str(m) for m in ranking(tag, members)] == [
        "10.0.0.1:5001", "[fd00::3]:5001", "10.0.0.2:5001", "10.0.0.4:5001"
    ]  # fmt: skip


def test_no_members_has_no_owner() -> None:
    with pytest.raises(ValueError, match="at least one member"):
        owner(BlobKey("sha256:00"), [])
    assert ranking(BlobKey("sha256:00"), []) == ()
