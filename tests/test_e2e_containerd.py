"""containerd pulls through a real cachesvc process from the real distribution registry.

The hosts.toml ``server`` of the pulled references points at a loopback port where nothing
listens, so every byte containerd gets can only have come through the mirror. A second pull
after ``Containerd.reset()`` (image, content and snapshots gone) must be served from the cache
alone: the registry's access log does not grow at all.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.peers.containerd import Containerd, write_hosts_toml
from tests.peers.images import LayerSpec, OCIImage, build_image, build_index, push
from tests.peers.ports import refused_url
from tests.peers.registry import DistributionRegistry, blob_path, manifest_path
from tests.peers_fixtures import (
    CachesvcProcess,
    MiB,
    containerd,
    registry,
    wait_until_quiet,
)

__all__ = ["containerd", "registry"]  # fixtures imported for pytest

pytestmark = [pytest.mark.peers, pytest.mark.timeout(60)]

LAYERS = [
    LayerSpec(7, seed=11),
    LayerSpec(300_000, seed=12, compression="none"),
    LayerSpec(2_000_000, seed=13, gzip_level=1),
    LayerSpec(6 * MiB, seed=14),
]


@pytest.fixture(scope="module")
def images(
    registry: DistributionRegistry, tmp_path_factory: pytest.TempPathFactory
) -> tuple[OCIImage, OCIImage]:
    """A four-layer image (``app:v1``) and a two-platform index (``app:multi``), pushed."""
    layout = tmp_path_factory.mktemp("layout")
    image = build_image(layout, "v1", LAYERS)
    index = build_index(layout, "multi")
    assert push(image, None, registry.ref("app", "v1")) == image.digest
    assert push(index, None, registry.ref("app", "multi")) == index.digest
    return image, index


@pytest.fixture
def cachesvc(registry: DistributionRegistry, tmp_path: Path) -> Iterator[CachesvcProcess]:
    """cachesvc mirroring the registry under its own name (``127.0.0.1:PORT``)."""
    with CachesvcProcess(tmp_path / "cachesvc", {registry.host_port: [registry.url]}) as proc:
        yield proc


@pytest.fixture
def dead_server_hosts(
    registry: DistributionRegistry, cachesvc: CachesvcProcess, tmp_path: Path
) -> Path:
    """A hosts dir: mirror = cachesvc, server = a loopback port where nothing listens."""
    hosts = tmp_path / "hosts"
    write_hosts_toml(hosts, registry.host_port, cachesvc.mirror_url, refused_url())
    return hosts


def _requests(cachesvc: CachesvcProcess, kind: str, result: str, registry: str) -> float:
    return cachesvc.metric("cachesvc_requests_total", kind=kind, result=result, registry=registry)


def _pull_twice_second_from_cache(
    containerd: Containerd,
    registry: DistributionRegistry,
    cachesvc: CachesvcProcess,
    hosts: Path,
    ref: str,
    expected_digest: str,
    blobs: list[str],
    platform: str | None,
) -> None:
    """Cold pull through the mirror, reset containerd, warm pull: zero upstream requests.

    ``blobs`` are the digests containerd fetches as blobs (layers and configs; manifests and
    indexes go through ``/manifests/``).
    """
    name = registry.host_port
    start = wait_until_quiet(registry)
    misses0 = _requests(cachesvc, "blob", "miss", name)
    hits0 = _requests(cachesvc, "blob", "hit", name)
    try:
        # -- cold: every blob comes from the registry, once, fetched by cachesvc ---------------
        before = {d: registry.count_blob_gets("app", d) for d in blobs}
        containerd.pull(ref, hosts, platform=platform)
        assert containerd.image_digest(ref) == expected_digest
        assert set(blobs) <= set(containerd.list_content())
        for d in blobs:
            assert registry.wait_for_requests("GET", blob_path("app", d), before[d] + 1) == (
                before[d] + 1
            ), f"blob {d} not fetched upstream"
        quiet = wait_until_quiet(registry)
        for d in blobs:
            assert registry.count_blob_gets("app", d) == before[d] + 1, f"{d} fetched twice"
        # containerd never reached the registry itself (its server is dead): only cachesvc did.
        agents = {e.user_agent for e in registry.access_log()[start:quiet]}
        assert agents
        assert all(a.startswith("cachesvc/") for a in agents), agents
        assert _requests(cachesvc, "blob", "miss", name) == misses0 + len(blobs)
        upstream_calls = cachesvc.metric("cachesvc_upstream_requests_total", registry=name)
        manifest_hits = _requests(cachesvc, "manifest", "hit", name)

        # -- warm: containerd forgets everything, pulls again, the registry sees nothing -------
        containerd.reset()
        containerd.pull(ref, hosts, platform=platform)
        assert containerd.image_digest(ref) == expected_digest
        assert set(blobs) <= set(containerd.list_content())
        assert wait_until_quiet(registry) == quiet, (
            "second pull reached the registry: "
            f"{[(e.method, e.uri) for e in registry.access_log()[quiet:]]}"
        )
        assert cachesvc.metric("cachesvc_upstream_requests_total", registry=name) == upstream_calls
        assert _requests(cachesvc, "blob", "miss", name) == misses0 + len(blobs)
        assert _requests(cachesvc, "blob", "hit", name) == hits0 + len(blobs)
        assert _requests(cachesvc, "manifest", "hit", name) > manifest_hits
        assert (
            _requests(cachesvc, "manifest", "miss", name)
            + _requests(cachesvc, "manifest", "coalesced", name)
            > 0
        )  # the cold pull's manifests, none since
        statuses = {e["status"] for e in cachesvc.access_log()}
        assert statuses <= {200, 206}, f"unexpected answers from cachesvc: {statuses}"
    finally:
        containerd.reset()


def test_multi_layer_image_pulls_through_the_mirror_and_then_from_cache_only(
    containerd: Containerd,
    registry: DistributionRegistry,
    images: tuple[OCIImage, OCIImage],
    cachesvc: CachesvcProcess,
    dead_server_hosts: Path,
) -> None:
    image, _ = images
    layers_and_config = [*image.single.layer_digests, image.config_digest]
    _pull_twice_second_from_cache(
        containerd,
        registry,
        cachesvc,
        dead_server_hosts,
        registry.ref("app", "v1"),
        image.digest,
        layers_and_config,
        platform=None,
    )
    # Upstream saw the tag once (its answer also cached the manifest by digest), and no
    # manifest request by digest at all.
    tag_requests = [e for e in registry.access_log() if e.path == "/v2/app/manifests/v1"]
    assert [e.user_agent.split("/")[0] for e in tag_requests if e.method != "PUT"] == ["cachesvc"]
    assert registry.count_requests("GET", manifest_path("app", image.digest)) == 0


def test_multi_arch_index_pulls_every_platform_through_the_mirror(
    containerd: Containerd,
    registry: DistributionRegistry,
    images: tuple[OCIImage, OCIImage],
    cachesvc: CachesvcProcess,
    dead_server_hosts: Path,
) -> None:
    _, index = images
    blobs = [d for p in index.platforms for d in (*p.layer_digests, p.config_digest)]
    _pull_twice_second_from_cache(
        containerd,
        registry,
        cachesvc,
        dead_server_hosts,
        registry.ref("app", "multi"),
        index.digest,
        blobs,
        platform="all",
    )
    # Every platform's manifest went through the mirror, not just this machine's.
    manifests = {p.manifest_digest for p in index.platforms}
    served = {e["reference"] for e in cachesvc.access_log() if e["status"] == 200}
    assert manifests <= served


@pytest.mark.parametrize("case", ["upstream_404", "unconfigured_registry"])
def test_mirror_404_lets_containerd_fall_back_to_the_server(
    case: str,
    containerd: Containerd,
    registry: DistributionRegistry,
    images: tuple[OCIImage, OCIImage],
    tmp_path: Path,
) -> None:
    """cachesvc does not know the image: it answers 404 fast, containerd pulls from ``server``.

    ``upstream_404``: the registry is configured, but its endpoint (an empty registry) does
    not have the image. ``unconfigured_registry``: cachesvc does not mirror the ``ns`` at all
    and must not contact anyone.
    """
    image, _ = images
    ref = registry.ref("app", "v1")
    with DistributionRegistry(tmp_path / "empty") as empty:
        name = registry.host_port if case == "upstream_404" else "elsewhere.test"
        with CachesvcProcess(tmp_path / "cachesvc", {name: [empty.url]}) as cachesvc:
            hosts = tmp_path / "hosts"
            write_hosts_toml(hosts, registry.host_port, cachesvc.mirror_url, registry.url)
            before = registry.count_blob_gets("app", image.layers[0].digest)
            try:
                containerd.pull(ref, hosts)
                assert containerd.image_digest(ref) == image.digest
            finally:
                containerd.reset()
            # The server delivered the content (containerd fell back for every request).
            assert (
                registry.wait_for_requests(
                    "GET", blob_path("app", image.layers[0].digest), before + 1
                )
                == before + 1
            )
            log = [e for e in cachesvc.access_log() if e["path"].startswith("/v2/app/")]
            assert log, "containerd never asked the mirror"
            assert all(e["status"] == 404 for e in log), [(e["path"], e["status"]) for e in log]
            assert all(e["duration_ms"] < 1000 for e in log), [
                (e["path"], e["duration_ms"]) for e in log
            ]
            assert any("/manifests/v1" in e["path"] for e in log)
            assert cachesvc.metric("cachesvc_http_responses_total", code="500") == 0
            upstream_seen = [e for e in empty.access_log() if e.path.startswith("/v2/app/")]
            if case == "upstream_404":
                assert upstream_seen, "cachesvc answered 404 without asking its upstream"
                assert {e.status for e in upstream_seen} == {404}
            else:
                assert upstream_seen == []  # never an open proxy
