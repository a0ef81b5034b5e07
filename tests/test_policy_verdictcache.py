"""The verdict cache: per (registry, repository, digest), refusals expire, bounded, keyed by keys."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from cachesvc.policy import Reason, Verdict, VerdictCache, keyring_id, load_public_key
from tests.peers import cosign

D1, D2, D3 = (f"sha256:{c * 64}" for c in "123")


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


def ok(digest: str) -> Verdict:
    return Verdict.verified(digest, key="k.pub", via="simple signing")


def no(digest: str) -> Verdict:
    return Verdict.refused(digest, Reason.NO_SIGNATURE, "nothing at the .sig tag")


def test_refusal_rechecked_after_ttl_verified_kept(clock: Clock) -> None:
    cache = VerdictCache(negative_ttl=30, max_entries=10, clock=clock)
    cache.put("r", "app", ok(D1), "keys")
    cache.put("r", "app", no(D2), "keys")
    clock.now += 29.9
    assert cache.get("r", "app", D2, "keys") == no(D2)
    clock.now += 0.1
    assert cache.get("r", "app", D2, "keys") is None
    clock.now += 10**6
    assert cache.get("r", "app", D1, "keys") == ok(D1)


def test_same_digest_other_repository_or_registry_is_another_question(clock: Clock) -> None:
    cache = VerdictCache(negative_ttl=30, max_entries=10, clock=clock)
    cache.put("r", "app", ok(D1), "keys")
    assert cache.get("r", "other", D1, "keys") is None
    assert cache.get("q", "app", D1, "keys") is None


def test_changed_keys_miss(clock: Clock) -> None:
    a = load_public_key(cosign.public_pem(ec.generate_private_key(ec.SECP256R1())), name="a")
    b = load_public_key(cosign.public_pem(ec.generate_private_key(ec.SECP256R1())), name="b")
    assert keyring_id([a, b]) == keyring_id([b, a])
    assert keyring_id([a]) != keyring_id([a, b])
    cache = VerdictCache(negative_ttl=30, max_entries=10, clock=clock)
    cache.put("r", "app", ok(D1), keyring_id([a, b]))
    assert cache.get("r", "app", D1, keyring_id([b])) is None
    assert cache.get("r", "app", D1, keyring_id([a, b])) is None, "a miss drops the entry"


def test_bounded_least_recently_used_goes_first(clock: Clock) -> None:
    cache = VerdictCache(negative_ttl=30, max_entries=2, clock=clock)
    cache.put("r", "app", ok(D1), "k")
    cache.put("r", "app", ok(D2), "k")
    assert cache.get("r", "app", D1, "k") is not None
    cache.put("r", "app", ok(D3), "k")
    assert len(cache) == 2
    assert cache.get("r", "app", D2, "k") is None
    assert cache.get("r", "app", D1, "k") is not None
    with pytest.raises(ValueError, match="at least 1"):
        VerdictCache(negative_ttl=1, max_entries=0, clock=clock)
