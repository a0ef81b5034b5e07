"""Self-check of tests/peers: the real registry, skopeo and containerd, driven on loopback."""

from __future__ import annotations

import hashlib
import json
import random
import re
import tarfile
from pathlib import Path

import pytest
import trustme

from tests.peers.containerd import Containerd, write_hosts_toml
from tests.peers.images import (
    ARM64,
    OCI_INDEX,
    LayerSpec,
    OCIImage,
    SkopeoError,
    build_image,
    build_index,
    push,
    skopeo_inspect,
    skopeo_inspect_raw,
)
from tests.peers.ports import free_port, refused_url
from tests.peers.registry import (
    BasicAuth,
    DistributionRegistry,
    TLSFiles,
    blob_path,
    parse_access_log_line,
)
from tests.peers_fixtures import containerd, registry, require_registry_and_skopeo

__all__ = ["containerd", "registry"]  # fixtures imported for pytest

pytestmark = pytest.mark.peers

THREE_LAYERS = [
    LayerSpec(7, seed=1),
    LayerSpec(300_000, seed=2, compression="none"),
    LayerSpec(2_000_000, seed=3, gzip_level=1),
]


@pytest.fixture(scope="module")
def layout(tmp_path_factory: pytest.TempPathFactory) -> tuple[OCIImage, OCIImage]:
    root = tmp_path_factory.mktemp("layout")
    return build_image(root, "v1", THREE_LAYERS), build_index(root, "multi")


@pytest.fixture(scope="module")
def pushed(
    registry: DistributionRegistry, layout: tuple[OCIImage, OCIImage]
) -> tuple[OCIImage, OCIImage]:
    image, index = layout
    assert push(image, None, registry.ref("app", "v1")) == image.digest
    assert push(index, None, registry.ref("app", "multi")) == index.digest
    return image, index


def test_layout_is_deterministic_and_matches_its_digests(tmp_path: Path) -> None:
    a = build_image(tmp_path / "a", "t", THREE_LAYERS)
    b = build_image(tmp_path / "b", "t", THREE_LAYERS)
    assert a.digest == b.digest
    assert a.index_digest is None
    for d in a.blobs():
        data = a.blob_path(d.digest).read_bytes()
        assert len(data) == d.size
        assert "sha256:" + hashlib.sha256(data).hexdigest() == d.digest
    with tarfile.open(a.blob_path(a.layers[2].digest)) as tar:  # gzip, detected
        (member,) = tar.getmembers()
        assert member.name == "layer-3.bin"
        extracted = tar.extractfile(member)
        assert extracted is not None
        assert extracted.read() == random.Random(3).randbytes(2_000_000)
    index = build_index(tmp_path / "a", "multi")
    assert len(index.platforms) == 2
    assert index.for_platform("linux/arm64").platform == ARM64
    tags = json.loads((tmp_path / "a" / "index.json").read_text())["manifests"]
    assert {m["annotations"]["org.opencontainers.image.ref.name"] for m in tags} == {"t", "multi"}


def test_push_preserves_digests_and_inspect_sees_them(
    registry: DistributionRegistry, pushed: tuple[OCIImage, OCIImage]
) -> None:
    image, index = pushed
    summary = skopeo_inspect(registry.ref("app", "v1"))
    assert summary["Digest"] == image.digest
    assert summary["Layers"] == [layer.digest for layer in image.layers]
    raw_index = skopeo_inspect_raw(registry.ref("app", "multi"))
    assert raw_index == index.blob_path(index.digest).read_bytes()
    parsed = skopeo_inspect(registry.ref("app", "multi"), raw=True)
    assert parsed["mediaType"] == OCI_INDEX
    arm = skopeo_inspect(registry.ref("app", "multi"), platform=ARM64)
    # For an index, skopeo's Digest is the index's; Layers are the chosen platform's.
    assert arm["Digest"] == index.digest
    assert arm["Architecture"] == "arm64"
    assert arm["Layers"] == list(index.for_platform(ARM64).layer_digests)
    # The access log parses, and counts what skopeo did.
    assert all(
        parse_access_log_line(line) for line in registry.access_log_path.read_text().splitlines()
    )
    assert registry.count_requests("PUT", re.escape("/v2/app/manifests/v1"), status=201) == 1


def test_containerd_pulls_through_a_mirror_only(
    containerd: Containerd,
    registry: DistributionRegistry,
    pushed: tuple[OCIImage, OCIImage],
    tmp_path: Path,
) -> None:
    image, index = pushed
    # The references name a registry where nothing listens; only the mirror can serve them.
    dead = f"127.0.0.1:{free_port()}"
    hosts = tmp_path / "hosts"
    write_hosts_toml(hosts, dead, registry.url, f"http://{dead}")
    big = image.layers[2].digest
    before = registry.count_blob_gets("app", big)

    containerd.pull(f"{dead}/app:v1", hosts)
    assert containerd.image_digest(f"{dead}/app:v1") == image.digest
    assert registry.wait_for_requests("GET", blob_path("app", big), before + 1) == before + 1
    gets = registry.requests("GET", blob_path("app", big))
    assert gets[-1].query == "ns=" + dead.replace(":", "%3A")
    assert gets[-1].user_agent.startswith("containerd/")

    # Present content is not fetched again; after reset it is.
    containerd.pull(f"{dead}/app:v1", hosts)
    assert registry.count_blob_gets("app", big) == before + 1
    containerd.reset()
    containerd.pull(f"{dead}/app:v1", hosts)
    assert registry.wait_for_requests("GET", blob_path("app", big), before + 2) == before + 2

    # Every platform of the index, without unpacking.
    containerd.content_fetch(f"{dead}/app:multi", hosts, platform="all")
    content = set(containerd.list_content())
    assert {d.digest for d in index.blobs()} <= content
    containerd.reset()
    assert containerd.list_images() == []


def test_containerd_falls_back_to_the_server_when_the_mirror_404s(
    containerd: Containerd,
    registry: DistributionRegistry,
    pushed: tuple[OCIImage, OCIImage],
    tmp_path: Path,
) -> None:
    image, _ = pushed
    with DistributionRegistry(tmp_path / "empty") as empty:
        hosts = tmp_path / "hosts"
        write_hosts_toml(hosts, registry.host_port, empty.url, registry.url)
        before = registry.count_blob_gets("app", image.layers[0].digest)
        containerd.pull(registry.ref("app", "v1"), hosts)
        containerd.reset()
        misses = empty.requests("GET", blob_path("app", image.layers[0].digest), status=404)
        assert len(misses) == 1
        assert registry.count_blob_gets("app", image.layers[0].digest) == before + 1
        server_gets = registry.requests("GET", blob_path("app", image.layers[0].digest))
        assert server_gets[-1].query == ""  # ns goes to mirrors only


def test_proxy_mode_registry_caches_after_a_double_fetch(
    containerd: Containerd,
    registry: DistributionRegistry,
    pushed: tuple[OCIImage, OCIImage],
    tmp_path: Path,
) -> None:
    image, _ = pushed
    big = image.layers[2].digest
    before = registry.count_blob_gets("app", big)
    with DistributionRegistry(tmp_path / "proxy", proxy_remote_url=registry.url) as proxy:
        hosts = tmp_path / "hosts"
        write_hosts_toml(hosts, registry.host_port, proxy.url, refused_url())
        ref = registry.ref("app", "v1")
        containerd.pull(ref, hosts)
        containerd.reset()
        # distribution 2.8 on a cold miss GETs the blob upstream twice: one stream for the
        # client, one (a goroutine) to store it locally.
        upstream = registry.wait_for_requests("GET", blob_path("app", big), before + 2)
        assert upstream == before + 2
        containerd.pull(ref, hosts)
        containerd.reset()
        assert proxy.wait_for_requests("GET", blob_path("app", big), 2) == 2
        assert registry.count_blob_gets("app", big) == upstream  # the second pull was a hit


def test_tls_and_basic_auth(layout: tuple[OCIImage, OCIImage], tmp_path: Path) -> None:
    require_registry_and_skopeo()
    ca = trustme.CA()
    server = ca.issue_cert("127.0.0.1")
    cert, key, certs = tmp_path / "cert.pem", tmp_path / "key.pem", tmp_path / "certs.d"
    server.cert_chain_pems[0].write_to_path(str(cert))
    server.private_key_pem.write_to_path(str(key))
    certs.mkdir()
    ca.cert_pem.write_to_path(str(certs / "ca.crt"))
    user = BasicAuth("alice", "s3cret")
    image, _ = layout
    with DistributionRegistry(tmp_path / "reg", auth=user, tls=TLSFiles(cert, key)) as reg:
        assert reg.url.startswith("https://127.0.0.1:")
        ref = reg.ref("private", "v1")
        assert push(image, None, ref, tls_verify=True, cert_dir=certs, creds=user) == image.digest
        with pytest.raises(SkopeoError):
            skopeo_inspect(ref, tls_verify=True, cert_dir=certs)
        summary = skopeo_inspect(ref, tls_verify=True, cert_dir=certs, creds=user)
        assert summary["Digest"] == image.digest
        statuses = {e.status for e in reg.access_log() if e.path == "/v2/private/manifests/v1"}
        assert statuses == {201, 401, 200}  # push, anonymous inspect, inspect as alice
