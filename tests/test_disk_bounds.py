"""storage.min_free and a percentage storage.max_size, on a real small filesystem (a tmpfs).

min_free bounds the filesystem, not the store: data that is not the cache's (here a file
beside storage.root) must make the cache yield, as other tenants of a node's disk would.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import replace
from pathlib import Path

import aiohttp
import pytest

from cachesvc.config import Config, parse_config
from cachesvc.errors import ConfigError
from cachesvc.oci import Digest
from tests.conftest import blob_url, daemon_for, make_config
from tests.fakes.registry import FakeRegistry
from tests.peers.smallfs import small_filesystem
from tests.polling import eventually

MIB = 1024 * 1024
FS_SIZE = 8 * MIB


def bounded(root: Path, upstream: str, storage: dict[str, str]) -> Config:
    """The test config for ``upstream`` with ``storage`` keys (root: ``root``)."""
    config = make_config(root, {"fake.test": [upstream]})
    keys = {"root": str(root), **storage}
    return replace(config, storage=parse_config({**_REGISTRY, "storage": keys}).storage)


_REGISTRY = {"registries": {"fake.test": {"endpoints": ["https://fake.test"]}}}


async def _cache_blobs(
    http: aiohttp.ClientSession, daemon: object, fake: FakeRegistry, count: int
) -> list[Digest]:
    digests = []
    for _ in range(count):
        data = os.urandom(MIB)
        digest = fake.add_blob(data)
        async with http.get(blob_url(daemon, digest)) as resp:  # type: ignore[arg-type]
            assert await resp.read() == data
        digests.append(Digest.parse(digest))
    return digests


def _gauge(daemon: object, name: str, labels: dict[str, str] | None = None) -> float | None:
    value: float | None = daemon.metrics.registry.get_sample_value(name, labels or {})  # type: ignore[attr-defined]
    return value


async def test_min_free_evicts_when_other_data_fills_the_filesystem(
    fake: FakeRegistry, tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    with small_filesystem(tmp_path / "fs", "8m") as fs:
        config = bounded(fs / "cache", fake.url, {"min_free": "50%"})
        async with daemon_for(config) as daemon:
            store = daemon.parts.store
            digests = await _cache_blobs(http, daemon, fake, 3)
            assert await eventually(lambda: all(store.size(d) for d in digests))
            assert _gauge(daemon, "cachesvc_storage_min_free_bytes") == FS_SIZE // 2
            assert await daemon.parts.evictor.sweep() == 0  # 5 MiB free: above the floor
            # Another tenant of the disk writes 1.5 MiB: free drops below 4 MiB (to about 3.4).
            (fs / "other-data").write_bytes(b"\0" * (3 * MIB // 2))
            await daemon.parts.evictor.sweep()
            assert await eventually(lambda: shutil.disk_usage(fs).free >= FS_SIZE // 2)
            kept = [d for d in digests if store.size(d) is not None]
            assert 0 < len(kept) < len(digests)
            evicted = _gauge(daemon, "cachesvc_evictions_total", {"reason": "min_free"})
            assert evicted == len(digests) - len(kept)


async def test_min_free_that_eviction_cannot_reach_is_logged(
    fake: FakeRegistry, tmp_path: Path, http: aiohttp.ClientSession, caplog: pytest.LogCaptureFixture
) -> None:
    with small_filesystem(tmp_path / "fs", "8m") as fs:
        config = bounded(fs / "cache", fake.url, {"min_free": "7MiB"})
        async with daemon_for(config) as daemon:
            (fs / "other-data").write_bytes(b"\0" * (2 * MIB))
            with caplog.at_level("WARNING", logger="cachesvc.eviction"):
                assert await daemon.parts.evictor.sweep() == 0  # nothing of ours to evict
            assert "below storage.min_free" in caplog.text
            assert _gauge(daemon, "cachesvc_storage_min_free_bytes") == 7 * MIB


async def test_max_size_as_a_percentage_of_the_filesystem(
    fake: FakeRegistry, tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    with small_filesystem(tmp_path / "fs", "8m") as fs:
        config = bounded(fs / "cache", fake.url, {"max_size": "25%"})
        async with daemon_for(config) as daemon:
            assert _gauge(daemon, "cachesvc_cache_capacity_bytes") == 2 * MIB
            assert _gauge(daemon, "cachesvc_storage_min_free_bytes") == 0
            store = daemon.parts.store
            digests = await _cache_blobs(http, daemon, fake, 3)
            assert await eventually(lambda: store.usage_bytes >= 3 * MIB or
                                    any(store.size(d) is None for d in digests))  # fmt: skip
            # A fill that just committed is held until it leaves the registry: the sweep
            # would skip its blob (retention's rule), so wait for every fill to end first.
            assert await eventually(lambda: not daemon.parts.fills.running())
            await daemon.parts.evictor.sweep()
            assert store.usage_bytes <= 2 * MIB
            gone = [d for d in digests if store.size(d) is None]
            assert len(gone) >= 2  # 3 MiB of blobs under a 2 MiB bound
            assert _gauge(daemon, "cachesvc_evictions_total", {"reason": "size"}) == len(gone)


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("min_free", "0%", "above 0%"),
        ("min_free", "100%", "under 100%"),
        ("min_free", "lots", "percentage of the filesystem such as '20%'"),
        ("max_size", "101%", "above 0% and 100%"),
        ("max_size", "-5%", "expected a size"),
    ],
)
def test_bad_disk_bounds_are_clear_errors(tmp_path: Path, key: str, value: str, message: str) -> None:
    with pytest.raises(ConfigError, match=rf"storage\.{key}: .*{message}"):
        bounded(tmp_path, "https://r.test", {key: value})
