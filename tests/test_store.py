"""The store directly (no HTTP): Ingest commit/cancel, usage accounting, the layout.

A blob is in ``blobs/`` only after a commit whose digest matched; every other way out
of an ingest (cancel, a wrong digest, an error inside ``async with``) leaves no file
behind, and ``usage_bytes``/``usage_entries`` always say what ``blobs/`` holds.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from cachesvc.errors import DigestMismatch
from cachesvc.oci import Digest
from cachesvc.store.lanes import STAGE_BYTES
from cachesvc.store.store import Store


def digest_of(data: bytes) -> Digest:
    return Digest("sha256", hashlib.sha256(data).hexdigest())


def on_disk(store: Store) -> tuple[int, int]:
    """What ``blobs/`` really holds (bytes, files), walked independently of the store."""
    sizes = [p.stat().st_size for p in (store.root / "blobs").rglob("*") if p.is_file()]
    return sum(sizes), len(sizes)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    opened = Store(tmp_path / "store")
    yield opened
    opened.close()


async def test_commit_puts_the_verified_blob_in_place_and_counts_it(store: Store) -> None:
    data = os.urandom(STAGE_BYTES + 12345)  # more than one stage through the lanes
    digest = digest_of(data)
    async with store.ingest(digest) as ingest:
        for at in range(0, len(data), 65536):
            await ingest.feed(data[at : at + 65536])
        final = await ingest.commit()
    assert final == store.path(digest)
    assert final.read_bytes() == data
    assert store.size(digest) == len(data)
    assert os.listdir(store.tmp_root) == []
    assert (store.usage_bytes, store.usage_entries) == (len(data), 1) == on_disk(store)


async def test_cancel_after_partial_writes_removes_the_temp_file_at_once(store: Store) -> None:
    data = os.urandom(3 * STAGE_BYTES)
    digest = digest_of(data)
    ingest = store.ingest(digest)
    await ingest.feed(data[: 2 * STAGE_BYTES + 5])  # stages in the lanes, one filling
    assert [p.name for p in store.tmp_root.iterdir()] == [ingest.temp.name]
    await ingest.cancel()
    assert os.listdir(store.tmp_root) == []
    await ingest.cancel()  # twice is harmless
    assert store.size(digest) is None
    assert (store.usage_bytes, store.usage_entries) == (0, 0) == on_disk(store)
    with pytest.raises(RuntimeError):
        await ingest.feed(b"more")


async def test_leaving_the_block_on_an_error_cancels(store: Store) -> None:
    data = os.urandom(100_000)
    digest = digest_of(data)
    with pytest.raises(ConnectionResetError):
        async with store.ingest(digest) as ingest:
            await ingest.feed(data[:50_000])
            raise ConnectionResetError("upstream went away")
    assert os.listdir(store.tmp_root) == []
    assert store.size(digest) is None
    assert on_disk(store) == (0, 0)


async def test_a_wrong_digest_is_refused_and_nothing_is_kept(store: Store) -> None:
    data = os.urandom(STAGE_BYTES + 1)
    claimed = digest_of(b"something else")
    async with store.ingest(claimed) as ingest:
        await ingest.feed(data)
        with pytest.raises(DigestMismatch, match=r"nothing was kept"):
            await ingest.commit()
    assert store.size(claimed) is None
    assert not store.path(claimed).exists()
    assert os.listdir(store.tmp_root) == []
    assert (store.usage_bytes, store.usage_entries) == (0, 0) == on_disk(store)


async def test_verify_then_commit_and_a_second_commit_of_the_same_blob(store: Store) -> None:
    data = b"layer bytes" * 1000
    digest = digest_of(data)
    for _ in range(2):  # the same content committed twice is one entry
        async with store.ingest(digest) as ingest:
            await ingest.feed(data)
            await ingest.verify()
            assert not store.path(digest).exists() or store.size(digest) == len(data)
            await ingest.commit()
    assert (store.usage_bytes, store.usage_entries) == (len(data), 1) == on_disk(store)


async def test_an_empty_blob_commits(store: Store) -> None:
    digest = digest_of(b"")
    async with store.ingest(digest) as ingest:
        await ingest.commit()
    assert store.size(digest) == 0
    assert (store.usage_bytes, store.usage_entries) == (0, 1) == on_disk(store)


async def test_usage_after_remove_and_after_reopening(store: Store, tmp_path: Path) -> None:
    blobs = [os.urandom(n) for n in (10, 5000, 70_000)]
    for data in blobs:
        async with store.ingest(digest_of(data)) as ingest:
            await ingest.feed(data)
            await ingest.commit()
    assert store.usage_bytes == sum(map(len, blobs))
    assert store.remove(digest_of(blobs[1])) is True
    assert store.remove(digest_of(blobs[1])) is False  # gone already: nothing counted twice
    expected = (len(blobs[0]) + len(blobs[2]), 2)
    assert (store.usage_bytes, store.usage_entries) == expected == on_disk(store)
    store.close()
    reopened = Store(tmp_path / "store")  # usage is counted again at start-up
    try:
        assert (reopened.usage_bytes, reopened.usage_entries) == expected
        assert {e.digest for e in reopened.entries()} == {digest_of(blobs[0]), digest_of(blobs[2])}
    finally:
        reopened.close()


def test_manifests_are_written_through_the_same_commit(store: Store) -> None:
    body = b'{"schemaVersion": 2}'
    digest = digest_of(body)
    record = store.put_manifest(digest, "application/vnd.oci.image.manifest.v1+json", body,
                                ("docker.io", "library/alpine"))  # fmt: skip
    assert record.size == len(body)
    assert store.get_manifest(digest) == (record, body)
    assert list(store.manifests()) == [(record, (("docker.io", "library/alpine"),))]
    assert (store.usage_bytes, store.usage_entries) == (len(body), 1) == on_disk(store)
    with pytest.raises(DigestMismatch):
        store.put_manifest(digest_of(b"other"), "application/json", body)
    assert store.get_manifest(digest_of(b"other")) is None
    assert os.listdir(store.tmp_root) == []
    assert store.remove(digest) is True
    assert store.get_manifest(digest) is None  # the index entry went with the file
    assert (store.usage_bytes, store.usage_entries) == (0, 0) == on_disk(store)


def test_leftover_temp_files_are_removed_at_start_up(tmp_path: Path) -> None:
    root = tmp_path / "store"
    Store(root).close()
    (root / "tmp" / "abc.123").write_bytes(b"half a layer")
    (root / "tmp" / "somedir").mkdir()
    reopened = Store(root)
    try:
        assert reopened.removed_temp_files == 2
        assert os.listdir(reopened.tmp_root) == []
    finally:
        reopened.close()
