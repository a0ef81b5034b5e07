"""The Bearer token cache as its own unit (cachesvc.upstream.tokencache): bounded in entries
and in bytes whatever keys clients make it hold, expired tokens never used and dropped
before live ones, least recently used first. Time is the caller's clock (the Authorizer
passes its injected clock's reading), so expiry is tested without waiting."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from cachesvc.upstream.tokencache import Token, TokenCache, TokenKey


def key(n: int) -> TokenKey:
    return ("https://registry.test", f"repository:team/app{n}:pull", "")


def test_entries_are_bounded_least_recently_used_first() -> None:
    cache = TokenCache(max_entries=3, max_bytes=1 << 20)
    for n in range(3):
        cache.put(key(n), Token(f"t{n}", expires_at=100.0), now=0.0)
    assert cache.get(key(0), now=1.0) is not None  # used: now the most recent
    cache.put(key(3), Token("t3", expires_at=100.0), now=1.0)
    assert len(cache) == 3
    assert cache.get(key(1), now=1.0) is None, "the least recently used went first"
    assert [cache.get(key(n), now=1.0) is not None for n in (0, 2, 3)] == [True] * 3


def test_bytes_are_bounded_and_counted_exactly() -> None:
    cache = TokenCache(max_entries=100, max_bytes=10_000)
    for n in range(5):
        cache.put(key(n), Token("x" * 3000, expires_at=100.0), now=0.0)
    assert (cache.bytes, len(cache)) == (9000, 3)  # 3 x 3000 fit, the two oldest went
    cache.put(key(4), Token("y" * 10, expires_at=100.0), now=0.0)  # replaces, not adds
    assert cache.bytes == 6010
    cache.put(key(9), Token("z" * 10_001, expires_at=100.0), now=0.0)
    assert cache.get(key(9), now=0.0) is None, "a token larger than the whole budget"
    assert cache.bytes == 6010
    cache.pop(key(4))
    cache.pop(key(4))  # twice: counted once
    assert cache.bytes == 6000
    cache.clear()
    assert (len(cache), cache.bytes) == (0, 0)


def test_an_expired_token_is_never_used_and_dropped() -> None:
    cache = TokenCache(max_entries=10, max_bytes=1000)
    cache.put(key(0), Token("abc", expires_at=60.0), now=0.0)
    assert cache.get(key(0), now=59.9) is not None
    assert cache.get(key(0), now=60.0) is None  # at its expiry: not used any more
    assert (len(cache), cache.bytes) == (0, 0), "dropped when met"


def test_a_full_cache_drops_expired_tokens_before_live_ones() -> None:
    cache = TokenCache(max_entries=3, max_bytes=1000)
    cache.put(key(0), Token("live-oldest", expires_at=500.0), now=0.0)
    cache.put(key(1), Token("short", expires_at=10.0), now=0.0)
    cache.put(key(2), Token("short", expires_at=10.0), now=0.0)
    cache.put(key(3), Token("new", expires_at=500.0), now=20.0)
    assert len(cache) == 2
    assert cache.get(key(0), now=20.0) is not None, "a live token outlived expired ones"
    assert cache.bytes == len("live-oldest") + len("new")


operations = st.lists(
    st.tuples(
        st.sampled_from(["put", "get", "pop"]),
        st.integers(0, 40),  # key: clients choose repository names
        st.integers(0, 700),  # token size
        st.integers(1, 50),  # lifetime
        st.integers(0, 5),  # time passing before the operation
    ),
    max_size=200,
)


@settings(max_examples=150, deadline=None)
@given(operations)
def test_any_sequence_stays_within_both_bounds(ops: list[tuple[str, int, int, int, int]]) -> None:
    cache = TokenCache(max_entries=8, max_bytes=2000)
    now = 0.0
    for op, n, size, lifetime, step in ops:
        now += step
        if op == "put":
            cache.put(key(n), Token("t" * size, expires_at=now + lifetime), now)
        elif op == "get":
            token = cache.get(key(n), now)
            assert token is None or token.expires_at > now, "an expired token was returned"
        else:
            cache.pop(key(n))
        assert len(cache) <= 8
        assert 0 <= cache.bytes <= 2000
    held = [cache.get(key(n), float("-inf")) for n in range(41)]
    assert cache.bytes == sum(len(t.value) for t in held if t is not None)
