"""cachesvc in front of the real distribution registry: skopeo through the mirror, and
single-flight for a large blob under 20 concurrent cold requests (counted in the registry's
access log, not in a fake)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest

from tests.peers.images import (
    ARM64,
    OCI_INDEX,
    LayerSpec,
    OCIImage,
    build_image,
    build_index,
    push,
    skopeo_inspect,
    skopeo_inspect_raw,
)
from tests.peers.registry import DistributionRegistry, blob_path
from tests.peers_fixtures import (
    CachesvcProcess,
    MiB,
    get_sha256,
    registry,
    wait_until_quiet,
)

__all__ = ["registry"]  # fixture imported for pytest

pytestmark = [pytest.mark.peers, pytest.mark.timeout(60)]

PREFIX = "registry.test"
"""The name cachesvc mirrors the registry under for path-prefix routing (a reference path
component cannot hold ``127.0.0.1:PORT``)."""

BIG = 64 * MiB


@pytest.fixture(scope="module")
def images(
    registry: DistributionRegistry, tmp_path_factory: pytest.TempPathFactory
) -> tuple[OCIImage, OCIImage, OCIImage]:
    """``app:v1`` (three layers), ``app:multi`` (two platforms), ``big:v1`` (one 64 MiB layer)."""
    layout = tmp_path_factory.mktemp("layout")
    image = build_image(
        layout,
        "v1",
        [LayerSpec(7, seed=31), LayerSpec(300_000, seed=32, compression="none"), LayerSpec(MiB)],
    )
    index = build_index(layout, "multi")
    big = build_image(layout, "big", [LayerSpec(BIG, seed=41, compression="none")])
    assert push(image, None, registry.ref("app", "v1")) == image.digest
    assert push(index, None, registry.ref("app", "multi")) == index.digest
    assert push(big, None, registry.ref("big", "v1")) == big.digest
    return image, index, big


@pytest.fixture
def cachesvc(registry: DistributionRegistry, tmp_path: Path) -> Iterator[CachesvcProcess]:
    """The registry mirrored under its own name (the default) and under ``registry.test``."""
    with CachesvcProcess(
        tmp_path / "cachesvc",
        {registry.host_port: [registry.url], PREFIX: [registry.url]},
        default_registry=registry.host_port,
    ) as proc:
        yield proc


@pytest.mark.parametrize("form", ["path_prefix", "default_registry"])
def test_skopeo_inspect_through_the_mirror(
    form: str,
    registry: DistributionRegistry,
    images: tuple[OCIImage, OCIImage, OCIImage],
    cachesvc: CachesvcProcess,
) -> None:
    """skopeo cannot send ``ns``: it names the registry by path prefix, or gets the default."""
    image, index, _ = images
    base = f"{cachesvc.mirror_host}/{PREFIX}" if form == "path_prefix" else cachesvc.mirror_host
    registry_name = PREFIX if form == "path_prefix" else registry.host_port

    summary = skopeo_inspect(f"{base}/app:v1")
    assert summary["Digest"] == image.digest
    assert summary["Layers"] == list(image.single.layer_digests)
    assert summary["Architecture"] == "amd64"  # read from the config blob, via the mirror
    # Exact upstream bytes, by tag and by digest.
    raw = image.blob_path(image.digest).read_bytes()
    assert skopeo_inspect_raw(f"{base}/app:v1") == raw
    assert skopeo_inspect_raw(f"{base}/app@{image.digest}") == raw
    assert (
        skopeo_inspect_raw(f"{base}/app:v1", config=True)
        == image.blob_path(image.config_digest).read_bytes()
    )

    assert skopeo_inspect_raw(f"{base}/app:multi") == index.blob_path(index.digest).read_bytes()
    assert skopeo_inspect(f"{base}/app:multi", raw=True)["mediaType"] == OCI_INDEX
    arm = skopeo_inspect(f"{base}/app:multi", platform=ARM64)
    assert arm["Digest"] == index.digest
    assert arm["Architecture"] == "arm64"
    assert arm["Layers"] == list(index.for_platform(ARM64).layer_digests)

    served = [e for e in cachesvc.access_log() if "/app/" in e["path"]]
    assert served
    assert {e["registry"] for e in served} == {registry_name}
    assert {e["repository"] for e in served} == {"app"}
    assert {e["status"] for e in served} == {200}
    assert cachesvc.metric("cachesvc_requests_total", kind="manifest", registry=registry_name) > 0


async def test_twenty_concurrent_cold_requests_make_one_upstream_get(
    registry: DistributionRegistry,
    images: tuple[OCIImage, OCIImage, OCIImage],
    cachesvc: CachesvcProcess,
) -> None:
    _, _, big = images
    (layer,) = big.single.layers
    assert layer.size > BIG
    digest = layer.digest
    before = registry.count_blob_gets("big", digest)
    url = f"{cachesvc.mirror_url}/v2/big/blobs/{digest}?ns={registry.host_port}"

    connector = aiohttp.TCPConnector(limit=0)
    timeout = aiohttp.ClientTimeout(total=45)
    async with aiohttp.ClientSession(
        connector=connector, timeout=timeout, auto_decompress=False, trust_env=False
    ) as session:
        results = await asyncio.gather(*(get_sha256(session, url) for _ in range(20)))

    assert results == [(200, layer.size, digest)] * 20
    await asyncio.to_thread(wait_until_quiet, registry)
    gets = registry.requests("GET", blob_path("big", digest))
    assert len(gets) == before + 1, f"{len(gets) - before} upstream GETs for one blob"
    assert gets[-1].user_agent.startswith("cachesvc/")
    assert gets[-1].size == layer.size

    name = registry.host_port
    counts = {
        result: cachesvc.metric(
            "cachesvc_requests_total", kind="blob", result=result, registry=name
        )
        for result in ("miss", "coalesced", "hit", "error")
    }
    assert counts["miss"] == 1
    assert counts["error"] == 0
    assert counts["miss"] + counts["coalesced"] + counts["hit"] == 20
    assert cachesvc.blob_path(digest).stat().st_size == layer.size
    assert list(cachesvc.tmp_dir.iterdir()) == []
