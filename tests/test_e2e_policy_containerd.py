"""containerd pulls a cosign-signed image through a cachesvc process under policy; an unsigned
one is refused. The hosts.toml is the one ``cachesvc containerd-config --write`` writes: for a
registry under policy its server is cachesvc itself, so containerd has no path around it."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from tests.peers import cosign
from tests.peers.containerd import Containerd, ContainerdError
from tests.peers.images import OCIImage, build_index, push
from tests.peers.registry import DistributionRegistry
from tests.peers_fixtures import CachesvcProcess, containerd, registry, wait_until_quiet

__all__ = ["containerd", "registry"]  # fixtures imported for pytest

pytestmark = [pytest.mark.peers, pytest.mark.timeout(120)]


@pytest.fixture(scope="module")
def images(
    registry: DistributionRegistry, tmp_path_factory: pytest.TempPathFactory
) -> tuple[OCIImage, OCIImage, OCIImage, bytes]:
    """``dev-team/app:signed`` and a signed index ``dev-team/app:multi``; ``:unsigned``."""
    layout = tmp_path_factory.mktemp("layout")
    release = ec.generate_private_key(ec.SECP256R1())
    signed = cosign.image(layout, registry, "dev-team/app", "signed", 21)
    cosign.sign_simple(layout, registry, "dev-team/app", signed, release)
    multi = build_index(layout, "multi")
    push(multi, None, registry.ref("dev-team/app", "multi"))
    cosign.sign_bundle(layout, registry, "dev-team/app", multi, release)
    unsigned = cosign.image(layout, registry, "dev-team/app", "unsigned", 22)
    return signed, multi, unsigned, cosign.public_pem(release)


@pytest.fixture
def cachesvc(
    registry: DistributionRegistry,
    tmp_path: Path,
    images: tuple[OCIImage, OCIImage, OCIImage, bytes],
) -> Iterator[CachesvcProcess]:
    key = tmp_path / "release.pub"
    key.write_bytes(images[3])
    guarded = {
        "endpoints": [registry.url],
        "allow": ["dev-team/*"],
        "verify": {"keys": [str(key)]},
    }
    extra = {"registries": {registry.host_port: guarded}}
    with CachesvcProcess(tmp_path / "cachesvc", {registry.host_port: [registry.url]},
                         extra=extra) as proc:  # fmt: skip
        yield proc


def containerd_config(cachesvc: CachesvcProcess, hosts: Path) -> str:
    """Run ``cachesvc containerd-config --write``; the text it wrote for the registry."""
    result = subprocess.run(
        [sys.executable, "-m", "cachesvc", "containerd-config", "--config",
         str(cachesvc.config_path), "--write", str(hosts), "--mirror-url", cachesvc.mirror_url],
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    [written] = hosts.glob("*/hosts.toml")
    return written.read_text()


def test_containerd_pulls_signed_images_and_is_refused_unsigned_ones(
    containerd: Containerd,
    registry: DistributionRegistry,
    cachesvc: CachesvcProcess,
    images: tuple[OCIImage, OCIImage, OCIImage, bytes],
    tmp_path: Path,
) -> None:
    signed, multi, unsigned, _ = images
    hosts = tmp_path / "hosts"
    text = containerd_config(cachesvc, hosts)
    assert f'server = "{cachesvc.mirror_url}"' in text
    assert registry.url not in text, "a direct path around the policy"
    name = registry.host_port
    try:
        containerd.pull(registry.ref("dev-team/app", "signed"), hosts)
        assert containerd.image_digest(registry.ref("dev-team/app", "signed")) == signed.digest
        # An index signed by a bundle: containerd then fetches its platform manifest by digest.
        containerd.pull(registry.ref("dev-team/app", "multi"), hosts, platform="linux/arm64")
        assert containerd.image_digest(registry.ref("dev-team/app", "multi")) == multi.digest
        with pytest.raises(ContainerdError, match="403"):
            containerd.pull(registry.ref("dev-team/app", "unsigned"), hosts)
        wait_until_quiet(registry)
        assert cachesvc.blob_path(signed.digest).exists()  # manifests are stored as blobs
        assert not cachesvc.blob_path(unsigned.digest).exists(), "the refused manifest was stored"
        verified = cachesvc.metric("cachesvc_policy_decisions_total", registry=name, result="verified")
        assert verified >= 2
        refused = cachesvc.metric(
            "cachesvc_policy_decisions_total", registry=name, result="denied_no_signature"
        )
        assert refused >= 1
        lines = [e for e in cachesvc.access_log() if e.get("policy") == "verify"]
        assert lines, "the refusal is not in the access log"
        assert all(e["status"] == 403 and "no signature" in e["error"] for e in lines)
    finally:
        containerd.reset()
