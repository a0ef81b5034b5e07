"""Prewarm against the real peers: the distribution registry upstream, a cachesvc process,
``cachesvc prewarm`` (the CLI) racing a real containerd pull of the same multi-arch image."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.peers.containerd import Containerd, write_hosts_toml
from tests.peers.images import AMD64, ARM64, LayerSpec, OCIImage, build_index, push
from tests.peers.ports import refused_url
from tests.peers.registry import DistributionRegistry, blob_path, manifest_path
from tests.peers_fixtures import (
    REPO_ROOT,
    CachesvcProcess,
    MiB,
    containerd,
    registry,
    wait_until_quiet,
)

__all__ = ["containerd", "registry"]  # fixtures imported for pytest

pytestmark = [pytest.mark.peers, pytest.mark.timeout(90)]


class AdminCachesvc(CachesvcProcess):
    """A cachesvc process with the admin API enabled."""

    def __init__(self, workdir: Path, registries: dict[str, list[str]], token_file: Path) -> None:
        super().__init__(workdir, registries)
        self.token_file = token_file

    def config(self) -> dict[str, Any]:
        data = super().config()
        data["admin"]["token_file"] = str(self.token_file)
        return data


@pytest.fixture(scope="module")
def index(registry: DistributionRegistry, tmp_path_factory: pytest.TempPathFactory) -> OCIImage:
    layout = tmp_path_factory.mktemp("layout")
    image = build_index(layout, "warm", {
        AMD64: [LayerSpec(12 * MiB, seed=301), LayerSpec(6 * MiB, seed=302)],
        ARM64: [LayerSpec(6 * MiB, seed=401), LayerSpec(4096, seed=402)],
    })  # fmt: skip
    assert push(image, None, registry.ref("app", "warm")) == image.digest
    return image


@pytest.fixture
def cachesvc(registry: DistributionRegistry, tmp_path: Path) -> Iterator[AdminCachesvc]:
    token = tmp_path / "token"
    token.write_text("peer-admin-token\n")
    with AdminCachesvc(tmp_path / "cachesvc", {registry.host_port: [registry.url]}, token) as proc:
        yield proc


def test_cli_prewarm_racing_a_containerd_pull_fetches_each_blob_once_and_one_platform_only(
    containerd: Containerd,
    registry: DistributionRegistry,
    index: OCIImage,
    cachesvc: AdminCachesvc,
    tmp_path: Path,
) -> None:
    hosts = tmp_path / "hosts"
    write_hosts_toml(hosts, registry.host_port, cachesvc.mirror_url, refused_url())
    ref = registry.ref("app", "warm")
    amd, arm = index.for_platform("linux/amd64"), index.for_platform("linux/arm64")
    wanted = [amd.config_digest, *amd.layer_digests]
    before = {d: registry.count_blob_gets("app", d) for d in wanted}
    env = {k: v for k, v in os.environ.items() if not k.startswith("CACHESVC_")}
    env["PYTHONPATH"] = str(REPO_ROOT)
    cli = subprocess.Popen(
        [sys.executable, "-m", "cachesvc", "prewarm", ref, "--platform", "linux/amd64",
         "--admin", cachesvc.admin_url, "--token-file", str(cachesvc.token_file)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, cwd=REPO_ROOT, text=True,
    )  # fmt: skip
    try:
        containerd.pull(ref, hosts, platform="linux/amd64")
        out, err = cli.communicate(timeout=60)
    finally:
        if cli.poll() is None:
            cli.kill()
            cli.wait()
    try:
        assert cli.returncode == 0, (out, err)
        assert "1 of 1 images done" in out
        assert containerd.image_digest(ref) == index.digest
        wait_until_quiet(registry)
        for d in wanted:
            assert registry.count_blob_gets("app", d) == before[d] + 1, d
        for d in [arm.config_digest, *arm.layer_digests]:
            assert registry.count_blob_gets("app", d) == 0, d
        assert registry.count_requests("GET", manifest_path("app", arm.manifest_digest)) == 0
        assert registry.count_requests("GET", blob_path("app", arm.manifest_digest)) == 0
        for d in wanted:
            assert cachesvc.blob_path(d).exists()
    finally:
        containerd.reset()
