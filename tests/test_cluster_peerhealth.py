"""Peer health: blocked and unreachable peers are skipped for a while, in rank order."""

from __future__ import annotations

import hashlib

from cachesvc.cluster.peerhealth import PeerHealth
from cachesvc.cluster.ranking import BlobKey, ranking
from cachesvc.config.peeraddress import PeerAddress


class Clock:
    def __init__(self) -> None:
        self.now = 50.0

    def __call__(self) -> float:
        return self.now


A, B, C, ME = (PeerAddress.of(f"127.0.0.{i}", 5001) for i in (2, 3, 4, 5))


def health(clock: Clock) -> PeerHealth:
    return PeerHealth(block_for=300, retry_unreachable=5, clock=clock)


def test_every_peer_ranked_above_self_is_asked_in_order() -> None:
    peers = health(Clock())
    assert peers.sources([A, B, ME, C], ME) == (A, B)
    assert peers.sources([ME, A, B, C], ME) == ()  # this daemon owns the key
    assert peers.sources([A, B, C], ME) == (A, B, C)  # not (yet) a member of its own view


def test_a_blocked_peer_is_skipped_for_block_for() -> None:
    clock = Clock()
    peers = health(clock)
    peers.block(A)
    assert peers.blocks == 1
    assert peers.sources([A, B, ME], ME) == (B,)
    clock.now += 299
    assert peers.state(A).state == "blocked"
    assert peers.state(A).seconds_left == 1
    peers.mark_ok(A)  # answering again does not lift a block
    assert peers.sources([A, B, ME], ME) == (B,)
    clock.now += 1
    assert peers.state(A).state == "ok"
    assert peers.sources([A, B, ME], ME) == (A, B)


def test_an_unreachable_peer_is_retried_later_or_after_a_success() -> None:
    clock = Clock()
    peers = health(clock)
    peers.mark_unreachable(B)
    assert peers.sources([A, B, C, ME], ME) == (A, C)
    clock.now += 5
    assert peers.sources([A, B, C, ME], ME) == (A, B, C)
    peers.mark_unreachable(B)
    peers.mark_ok(B)
    assert peers.state(B).state == "ok"


def test_blocked_wins_over_unreachable() -> None:
    clock = Clock()
    peers = health(clock)
    peers.block(C)
    peers.mark_unreachable(C)
    assert peers.state(C).state == "blocked"
    clock.now += 300
    assert peers.state(C).state == "ok"


def test_the_admin_view_lists_every_other_member() -> None:
    clock = Clock()
    peers = health(clock)
    peers.block(A)
    peers.mark_unreachable(C)
    clock.now += 1
    assert [s.as_json() for s in peers.states([C, ME, B, A], ME)] == [
        {"address": "127.0.0.2:5001", "state": "blocked", "seconds_left": 299.0},
        {"address": "127.0.0.3:5001", "state": "ok"},
        {"address": "127.0.0.4:5001", "state": "unreachable", "seconds_left": 4.0},
    ]


def test_members_that_left_are_forgotten() -> None:
    peers = health(Clock())
    peers.block(A)
    peers.mark_unreachable(B)
    peers.retain([B, ME])
    assert peers.state(A).state == "ok"
    assert peers.state(B).state == "unreachable"


def test_with_a_real_ranking_a_blocked_owner_hands_over_to_the_next() -> None:
    members = [A, B, C, ME]
    peers = health(Clock())
    for i in range(50):
        key = BlobKey("sha256:" + hashlib.sha256(str(i).encode()).hexdigest())
        order = ranking(key, members)
        peers.block(order[0])
        expected = tuple(m for m in order[1 : order.index(ME)]) if order[0] != ME else ()
        assert peers.sources(order, ME) == expected
        peers.retain([])
