"""The fill's release rule, directly (no HTTP): an in-memory upstream, real followers.

Followers read through ``Fill.read`` exactly as the handler does. The rule under test:
while a fill runs, followers get at most ``size - 1`` bytes (or all but the newest
chunk when the size is unknown); the rest only after the digest matched; on any
failure every follower gets ``FillFailed`` and the store keeps nothing.
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import os
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry

from cachesvc.errors import DigestMismatch, UpstreamError
from cachesvc.metrics import Metrics
from cachesvc.mirror.fill import BodyOpener, FileSpan, Fill, FillFailed, Pacing
from cachesvc.mirror.fills import FillManager
from cachesvc.oci import Digest
from cachesvc.store.lanes import STAGE_BYTES
from cachesvc.store.store import Store
from cachesvc.upstream.body import BlobBody

SMALL = Pacing(follow_span=64, memory_bytes=256, memory_total=1024)


def digest_of(data: bytes) -> Digest:
    return Digest("sha256", hashlib.sha256(data).hexdigest())


def opener_of(
    chunks: list[bytes],
    size: int | None,
    *,
    before: Callable[[int], Awaitable[None]] | None = None,
    fail_at: int | None = None,
) -> BodyOpener:
    """An upstream answer held in memory: ``chunks`` as they would arrive.

    ``before(i)`` runs before chunk ``i`` is handed over (and with ``i == len(chunks)``
    before the body ends); ``fail_at`` raises a connection reset instead of chunk ``i``.
    """

    async def body() -> AsyncIterator[bytes]:
        for index in range(len(chunks) + 1):
            if before is not None:
                await before(index)
            await asyncio.sleep(0)  # a network read gives the loop a turn
            if index == fail_at:
                raise UpstreamError("upstream reset the connection")
            if index < len(chunks):
                yield chunks[index]

    @asynccontextmanager
    async def opener() -> AsyncIterator[BlobBody]:
        yield BlobBody(size, body(), endpoint="memory")

    return opener


@dataclass
class Follower:
    """One client of the fill: what it received and how its read ended."""

    got: bytearray = field(default_factory=bytearray)
    outcome: str = "running"  # complete | failed | refused
    lag: int = 0  # loop turns given away after each piece: a slow client

    async def follow(self, fill: Fill) -> None:
        try:
            await fill.wait_ready()
        except UpstreamError:
            self.outcome = "refused"
            return
        try:
            async with fill.read(0, fill.size) as pieces:
                async for piece in pieces:
                    if isinstance(piece, FileSpan):
                        async for data in piece.read():
                            self.got += data
                    else:
                        self.got += piece
                    for _ in range(self.lag):
                        await asyncio.sleep(0)
        except FillFailed:
            self.outcome = "failed"
            return
        self.outcome = "complete"


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    opened = Store(tmp_path / "store")
    yield opened
    opened.close()


def new_fill(store: Store, digest: Digest, opener: BodyOpener, metrics: Metrics) -> Fill:
    return Fill(digest, "memory.test", opener, store, metrics, stall_timeout=30, pacing=SMALL)


async def test_the_last_byte_waits_for_the_digest(store: Store) -> None:
    data = os.urandom(10_000)
    chunks = [data[i : i + 1000] for i in range(0, len(data), 1000)]
    body_may_end = asyncio.Event()
    fill: Fill | None = None

    async def before(index: int) -> None:
        if index == len(chunks):  # every byte was sent; the body has not ended yet
            assert fill is not None
            for _ in range(20):
                await asyncio.sleep(0)
            # Every byte was received, but not all of them may be sent yet.
            assert fill.received == len(data)
            assert fill.released == len(data) - 1
            assert not fill.verified
            assert len(follower.got) <= len(data) - 1
            assert follower.outcome == "running"
            await body_may_end.wait()

    metrics = Metrics(CollectorRegistry())
    fill = new_fill(store, digest_of(data), opener_of(chunks, len(data), before=before), metrics)
    follower = Follower()
    fill.start()
    following = asyncio.ensure_future(follower.follow(fill))
    await asyncio.sleep(0.01)
    body_may_end.set()
    await fill.drain()
    await following
    assert fill.verified
    assert fill.error is None
    assert follower.outcome == "complete"
    assert bytes(follower.got) == data
    assert store.size(digest_of(data)) == len(data)
    assert os.listdir(store.tmp_root) == []


async def test_an_unsized_body_holds_back_its_newest_chunk(store: Store) -> None:
    data = os.urandom(4000)
    chunks = [data[:1000], data[1000:2500], data[2500:]]
    seen: list[tuple[int, int]] = []
    fill: Fill | None = None

    async def before(index: int) -> None:
        if fill is not None:
            seen.append((fill.received, fill.released))

    metrics = Metrics(CollectorRegistry())
    fill = new_fill(store, digest_of(data), opener_of(chunks, None, before=before), metrics)
    fill.start()
    await fill.drain()
    # Before chunk i, the released bytes stop at the start of the newest chunk received.
    assert seen == [(0, 0), (1000, 0), (2500, 1000), (4000, 2500)]
    assert fill.released == fill.size == len(data)
    assert fill.verified


@pytest.mark.parametrize("size_known", [True, False])
async def test_a_digest_mismatch_fails_every_follower_and_keeps_nothing(
    store: Store, size_known: bool
) -> None:
    data = os.urandom(3000)
    sent = bytes([data[0] ^ 1]) + data[1:]  # one bit off
    chunks = [sent[i : i + 500] for i in range(0, len(sent), 500)]
    metrics = Metrics(CollectorRegistry())
    opener = opener_of(chunks, len(sent) if size_known else None)
    fill = new_fill(store, digest_of(data), opener, metrics)
    followers = [Follower(), Follower(lag=3)]
    fill.start()
    await asyncio.gather(*(f.follow(fill) for f in followers))
    assert isinstance(fill.error, DigestMismatch)
    assert "nothing was kept" in fill.error.message
    for follower in followers:
        assert follower.outcome == "failed"
        assert len(follower.got) < len(sent)
        assert sent.startswith(follower.got)
    assert store.size(digest_of(data)) is None
    assert os.listdir(store.tmp_root) == []
    mismatches = metrics.registry.get_sample_value(
        "cachesvc_digest_mismatches_total", {"registry": "memory.test"}
    )
    assert mismatches == 1


async def test_an_empty_body_is_ready_only_once_verified(store: Store) -> None:
    metrics = Metrics(CollectorRegistry())
    wrong = new_fill(store, digest_of(b"not empty"), opener_of([], 0), metrics)
    wrong.start()
    with pytest.raises(DigestMismatch):
        await wrong.wait_ready()
    right = new_fill(store, digest_of(b""), opener_of([], 0), metrics)
    right.start()
    await right.wait_ready()
    assert right.verified
    await right.drain()
    assert store.size(digest_of(b"")) == 0


async def test_the_registry_joins_runs_one_fill_and_forgets_it_when_done(store: Store) -> None:
    data = os.urandom(2 * STAGE_BYTES + 99)  # through full stages: bytes leave memory
    chunks = [data[i : i + 65536] for i in range(0, len(data), 65536)]
    metrics = Metrics(CollectorRegistry())
    fills = FillManager(store, metrics, stall_timeout=30, pacing=SMALL)
    digest = digest_of(data)
    fill, started = fills.start(digest, "memory.test", opener_of(chunks, len(data)))
    again, joined_started = fills.start(digest, "memory.test", opener_of([], 0))
    assert (started, joined_started) == (True, False)
    assert again is fill
    assert fills.get(digest) is fill
    assert fills.running() == [fill]
    late = Follower(lag=2)
    watched = [received async for received in fill.progress()]
    assert watched == sorted(watched)
    assert watched[-1] <= len(data)
    await fill.drain()
    assert fills.get(digest) is None
    assert fills.running() == []
    await late.follow(fill)  # joined after the end: served from the committed file
    assert late.outcome == "complete"
    assert bytes(late.got) == data
    await fills.wait_idle(1.0)
    await fills.close()


async def test_a_cancelled_fill_fails_its_followers_and_removes_its_temp_file(
    store: Store,
) -> None:
    data = os.urandom(5000)
    midway, stuck = asyncio.Event(), asyncio.Event()

    async def before(index: int) -> None:
        if index == 2:
            midway.set()
            await stuck.wait()  # upstream goes quiet mid-body

    metrics = Metrics(CollectorRegistry())
    fills = FillManager(store, metrics, stall_timeout=30, pacing=SMALL)
    chunks = [data[:1000], data[1000:2000], data[2000:]]
    fill, _ = fills.start(digest_of(data), "memory.test", opener_of(chunks, 5000, before=before))
    follower = Follower()
    following = asyncio.ensure_future(follower.follow(fill))
    await midway.wait()
    assert fill.received == 2000
    assert len(os.listdir(store.tmp_root)) == 1
    await fills.close()
    await following
    assert follower.outcome == "failed"
    assert len(follower.got) < len(data)
    assert os.listdir(store.tmp_root) == []
    assert store.size(digest_of(data)) is None


# -- the property ---------------------------------------------------------------------

FAILURES = ("none", "digest", "reset", "short", "long")


@dataclass(frozen=True)
class Scenario:
    """One upstream answer, how it goes wrong (or not), and when its followers join."""

    size: int
    cuts: list[int]  # chunk boundaries
    size_known: bool  # Content-Length, or chunked
    failure: str  # one of FAILURES
    fail_at: int  # the chunk where "reset" or "short" strikes
    joins: list[int]  # per follower: joins before chunk i; past the last: after the end
    lags: list[int]  # per follower: loop turns given away after each piece
    pacing: Pacing


@st.composite
def scenarios(draw: st.DrawFn) -> Scenario:
    size = draw(st.one_of(st.integers(1, 5000), st.integers(STAGE_BYTES - 10, STAGE_BYTES + 5000)))
    cuts = sorted(draw(st.sets(st.integers(1, size - 1), max_size=12)) if size > 1 else set())
    chunk_count = len(cuts) + 1
    joins = draw(st.lists(st.integers(0, chunk_count + 1), min_size=1, max_size=4))
    return Scenario(
        size=size,
        cuts=cuts,
        size_known=draw(st.booleans()),
        failure=draw(st.sampled_from(FAILURES)),
        fail_at=draw(st.integers(0, chunk_count - 1)),
        joins=joins,
        lags=draw(st.lists(st.integers(0, 4), min_size=len(joins), max_size=len(joins))),
        pacing=Pacing(
            follow_span=draw(st.sampled_from([1, 100, 4096, 1024 * 1024])),
            memory_bytes=draw(st.sampled_from([0, 300, 64 * 1024])),
        ),
    )


async def run_scenario(root: Path, case: Scenario) -> None:
    data = os.urandom(case.size)
    digest = digest_of(data)
    sent = data
    if case.failure == "digest":
        at = case.size // 2
        sent = data[:at] + bytes([data[at] ^ 0x80]) + data[at + 1 :]
    elif case.failure == "long":
        sent = data + b"x"
    bounds = [0, *case.cuts, len(sent)]
    chunks = [sent[a:b] for a, b in itertools.pairwise(bounds)]
    if case.failure == "short":
        chunks = chunks[: case.fail_at]
    declared = case.size if case.size_known else None
    joins = case.joins
    followers = [Follower(lag=lag) for lag in case.lags]
    tasks: dict[int, asyncio.Task[None]] = {}
    fill: Fill | None = None

    async def before(index: int) -> None:
        assert fill is not None
        for number, (follower, join) in enumerate(zip(followers, joins, strict=True)):
            if join == index:
                tasks[number] = asyncio.ensure_future(follower.follow(fill))

    store = Store(root)
    try:
        metrics = Metrics(CollectorRegistry())
        reset_at = case.fail_at if case.failure == "reset" else None
        opener = opener_of(chunks, declared, before=before, fail_at=reset_at)
        fill = Fill(
            digest, "memory.test", opener, store, metrics, stall_timeout=30, pacing=case.pacing
        )
        fill.start()
        await fill.drain()
        for number, follower in enumerate(followers):
            if number not in tasks:  # joins after the end (or the body never got that far)
                tasks[number] = asyncio.ensure_future(follower.follow(fill))
        await asyncio.gather(*tasks.values())
        if case.failure == "none":
            assert fill.verified
            assert fill.error is None
            assert store.size(digest) == case.size
            for follower in followers:
                assert follower.outcome == "complete"
                assert bytes(follower.got) == data
        else:
            assert fill.error is not None
            assert not fill.verified
            assert store.size(digest) is None
            for follower in followers:
                assert follower.outcome in ("failed", "refused")
                assert len(follower.got) < case.size  # never all ``size`` bytes of a wrong blob
                assert sent.startswith(follower.got)  # and only what upstream really sent
        assert os.listdir(store.tmp_root) == []
    finally:
        store.close()


@settings(
    max_examples=60,
    deadline=None,  # speed is for benchmarks; a disk may be slow
    suppress_health_check=[HealthCheck.too_slow],
)
@given(scenarios())
def test_no_follower_ever_holds_a_whole_wrong_blob(case: Scenario) -> None:
    with tempfile.TemporaryDirectory() as root:
        asyncio.run(run_scenario(Path(root), case))
