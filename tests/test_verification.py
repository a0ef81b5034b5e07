"""Verification of stored bytes, directly: the hash-while-sending release rule, the
background scrub, and an index whose database is damaged (not just missing)."""

from __future__ import annotations

import asyncio
import os
from dataclasses import replace
from pathlib import Path

import aiohttp
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cachesvc.oci import Digest
from cachesvc.store.verification import StoredMismatch, checked_spans
from tests.conftest import StartDaemon, blob_url, daemon_for, make_config
from tests.fakes.registry import OCI_MANIFEST, FakeRegistry
from tests.polling import eventually


async def _released(path: Path, digest: Digest) -> tuple[bytes, bool]:
    """What ``checked_spans`` lets out of ``path``, and whether it ended in a mismatch."""
    fd = os.open(path, os.O_RDONLY)
    size = os.fstat(fd).st_size
    out = bytearray()
    try:
        async for offset, count in checked_spans(fd, digest, size):
            assert offset == len(out), "spans must come in order, without gaps"
            out += os.pread(fd, count, offset)
    except StoredMismatch:
        return bytes(out), True
    finally:
        os.close(fd)
    return bytes(out), False


@settings(max_examples=40, deadline=None)
@given(data=st.binary(min_size=1, max_size=3 * 1024 * 1024 + 7), flip=st.integers(min_value=0))
def test_a_wrong_file_never_gets_out_whole(tmp_path_factory: pytest.TempPathFactory,
                                           data: bytes, flip: int) -> None:  # fmt: skip
    """Wherever the wrong byte is, at most size - 1 bytes are released; a right file whole."""
    path = tmp_path_factory.mktemp("spans") / "blob"
    digest = Digest.of(data)
    path.write_bytes(data)
    assert asyncio.run(_released(path, digest)) == (data, False)
    wrong = bytearray(data)
    wrong[flip % len(data)] ^= 0x01
    path.write_bytes(bytes(wrong))
    released, failed = asyncio.run(_released(path, digest))
    assert failed
    assert len(released) <= len(data) - 1
    assert released == bytes(wrong[: len(released)])


async def test_the_scrub_finds_and_drops_a_damaged_file(
    fake: FakeRegistry, start_daemon: StartDaemon, storage: Path, http: aiohttp.ClientSession
) -> None:
    """A file nobody asks for is still checked: at ``storage.scrub_rate``, in the background."""
    data = os.urandom(50_000)
    digest = fake.add_blob(data)
    hexdigest = digest.split(":")[1]
    stored = storage / "blobs" / "sha256" / hexdigest[:2] / hexdigest
    async with start_daemon({"fake.test": [fake.url]}) as d:
        async with http.get(blob_url(d, digest)) as got:
            assert await got.read() == data
        # The commit follows the last byte; a stop before it would leave nothing to damage
        # (and nothing in the index for the scrub to check).
        assert await eventually(lambda: stored.exists())
    stored.write_bytes(data[:-1] + b"\0")
    config = make_config(storage, {"fake.test": [fake.url]})
    scrub = replace(config.storage, scrub_rate=1024 * 1024, scrub_interval=0.2)
    async with daemon_for(replace(config, storage=scrub)) as d:
        assert await eventually(lambda: not stored.exists(), within=20), "scrub missed it"
        found = d.metrics.registry.get_sample_value(
            "cachesvc_store_damaged_total", {"reason": "mismatch", "found_by": "scrub"}
        )
        assert found == 1
        async with http.get(blob_url(d, digest)) as resp:
            assert await resp.read() == data  # fetched again
    assert fake.count("GET", "/blobs/") == 2


async def test_a_damaged_index_is_set_aside_and_rebuilt(
    fake: FakeRegistry, start_daemon: StartDaemon, storage: Path, http: aiohttp.ClientSession
) -> None:
    digest, _ = fake.add_image("team/app", "v1", [b"layer"])
    async with start_daemon({"fake.test": [fake.url]}) as d:
        url = f"{d.mirror_url}/v2/team/app/manifests/v1?ns=fake.test"
        async with http.get(url, headers={"Accept": OCI_MANIFEST}) as resp:
            assert resp.status == 200
    (storage / "index" / "cache.db").write_bytes(b"not a database" * 100)
    fake.faults.status = 503
    async with start_daemon({"fake.test": [fake.url]}) as d:
        url = f"{d.mirror_url}/v2/team/app/manifests/{digest}?ns=fake.test"
        async with http.get(url, headers={"Accept": OCI_MANIFEST}) as resp:
            assert resp.status == 200, await resp.text()
            assert resp.headers["Docker-Content-Digest"] == digest
    assert list(storage.parent.glob("store/index.damaged-*")), "the damaged index was not kept"
