"""Policy at the node, end to end through a running cachesvc in front of the real
distribution registry: cosign-format signatures made with keys generated here, pushed with
skopeo; allow lists counted in the registry's own access log; clients by TCP peer address."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from cachesvc.app import Daemon
from cachesvc.oci import Digest
from tests.clock import AdvancingClock
from tests.conftest import StartDaemon
from tests.peers import cosign
from tests.peers.images import OCI_INDEX, OCI_MANIFEST, OCIImage, build_index, push
from tests.peers.registry import DistributionRegistry
from tests.peers_fixtures import registry, wait_until_quiet

__all__ = ["registry"]  # fixture imported for pytest

pytestmark = [pytest.mark.peers, pytest.mark.timeout(120)]

ACCEPT = {"Accept": f"{OCI_MANIFEST}, {OCI_INDEX}"}


@dataclass(frozen=True)
class Signed:
    """The module's images in ``dev-team/app`` (and one index, one outside the allow list)."""

    good: OCIImage
    bundled: OCIImage
    unsigned: OCIImage
    tampered: OCIImage
    copied: OCIImage
    stranger: OCIImage
    late: OCIImage
    multi: OCIImage
    secret: OCIImage
    release_pem: bytes
    other_pem: bytes
    release: ec.EllipticCurvePrivateKey
    other: ec.EllipticCurvePrivateKey
    layout: Path


@pytest.fixture(scope="module")
def signed(registry: DistributionRegistry, tmp_path_factory: pytest.TempPathFactory) -> Signed:
    layout = tmp_path_factory.mktemp("layout")
    release = ec.generate_private_key(ec.SECP256R1())
    other = ec.generate_private_key(ec.SECP256R1())
    repo = "dev-team/app"

    def img(tag: str, seed: int, name: str = repo) -> OCIImage:
        return cosign.image(layout, registry, name, tag, seed)

    good, bundled, unsigned = img("good", 1), img("bundled", 2), img("unsigned", 3)
    tampered, copied, stranger, late = img("tampered", 4), img("copied", 5), img("stranger", 6), img("late", 7)
    cosign.sign_simple(layout, registry, repo, good, release)
    cosign.sign_bundle(layout, registry, repo, bundled, release)
    cosign.sign_simple(layout, registry, repo, tampered, release, tamper=True)
    cosign.sign_simple(layout, registry, repo, copied, release, claim=good.digest)
    cosign.sign_simple(layout, registry, repo, stranger, other)
    multi = build_index(layout, "multi")
    push(multi, None, registry.ref("dev-team/multi", "v1"))
    cosign.sign_simple(layout, registry, "dev-team/multi", multi, release)
    secret = img("v1", 9, "secret/app")
    return Signed(
        good, bundled, unsigned, tampered, copied, stranger, late, multi, secret,
        cosign.public_pem(release), cosign.public_pem(other), release, other, layout,
    )  # fmt: skip


@pytest.fixture
def key_file(tmp_path: Path, signed: Signed) -> Path:
    path = tmp_path / "keys" / "release.pub"
    path.parent.mkdir()
    path.write_bytes(signed.release_pem)
    return path


def policy(registry: DistributionRegistry, key_file: Path, **verify: Any) -> dict[str, Any]:
    return {
        f"registry:{registry.host_port}": {
            "allow": ["dev-team/*"],
            "verify": {"keys": [str(key_file)], **verify},
            "negative_ttl": "30s",
        }
    }


@pytest.fixture
async def daemon(
    start_daemon: StartDaemon, registry: DistributionRegistry, key_file: Path
) -> AsyncIterator[Daemon]:
    async with start_daemon({registry.host_port: [registry.url]}, **policy(registry, key_file)) as d:
        yield d


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def get(
    http: aiohttp.ClientSession, daemon: Daemon, registry: DistributionRegistry, path: str,
    **headers: str,
) -> tuple[int, dict[str, Any]]:  # fmt: skip
    url = f"{daemon.mirror_url}/v2/{path}?ns={registry.host_port}"
    async with http.get(url, headers={**ACCEPT, **headers}) as resp:
        body = await resp.read()
        if resp.status == 200:
            return 200, {"digest": resp.headers["Docker-Content-Digest"], "body": body}
        return resp.status, (await resp.json())["errors"][0]


def stored(daemon: Daemon, digest: str) -> bool:
    return daemon.parts.store.get_manifest(Digest.parse(digest)) is not None


def decisions(daemon: Daemon, registry: DistributionRegistry, result: str) -> float:
    value = daemon.metrics.registry.get_sample_value(
        "cachesvc_policy_decisions_total", {"registry": registry.host_port, "result": result}
    )
    assert value is not None, f"no series for {result}"
    return value


async def test_signed_images_served_and_refusals_say_why_and_store_nothing(
    daemon: Daemon, registry: DistributionRegistry, signed: Signed, http: aiohttp.ClientSession
) -> None:
    for result in ("verified", "cached", "denied_no_signature", "denied_allow"):
        assert decisions(daemon, registry, result) == 0  # exported from start-up
    for tag, image in (("good", signed.good), ("bundled", signed.bundled)):
        status, answer = await get(http, daemon, registry, f"dev-team/app/manifests/{tag}")
        assert status == 200, answer
        assert answer["digest"] == image.digest
        assert stored(daemon, image.digest)
    assert decisions(daemon, registry, "verified") == 2
    assert decisions(daemon, registry, "cached") == 0  # one decision per request, not two
    refusals = {
        "unsigned": (signed.unsigned, "no signature"),
        "tampered": (signed.tampered, "signature by an unknown key"),
        "copied": (signed.copied, "digest claim for another image"),
        "stranger": (signed.stranger, "signature by an unknown key"),
    }
    for tag, (image, phrase) in refusals.items():
        for reference in (tag, image.digest):  # by tag and by digest alike
            status, error = await get(http, daemon, registry, f"dev-team/app/manifests/{reference}")
            assert status == 403, (tag, error)
            assert error["code"] == "DENIED"
            assert error["message"].startswith(f"{registry.host_port}/dev-team/app: {phrase}")
            assert image.digest in error["message"]
        assert not stored(daemon, image.digest), f"refused {tag} was stored"
    assert decisions(daemon, registry, "denied_no_signature") == 2
    assert decisions(daemon, registry, "denied_unknown_key") == 4
    assert decisions(daemon, registry, "denied_wrong_digest") == 2
    # A second request is decided from the cached verdict: no more upstream requests.
    quiet = wait_until_quiet(registry)
    before = decisions(daemon, registry, "cached")
    status, _ = await get(http, daemon, registry, f"dev-team/app/manifests/{signed.good.digest}")
    assert status == 200
    assert decisions(daemon, registry, "cached") == before + 1
    assert wait_until_quiet(registry) == quiet


async def test_a_signed_index_covers_its_platform_manifests(
    daemon: Daemon, registry: DistributionRegistry, signed: Signed, http: aiohttp.ClientSession
) -> None:
    status, answer = await get(http, daemon, registry, "dev-team/multi/manifests/v1")
    assert status == 200
    assert answer["digest"] == signed.multi.digest
    for platform in signed.multi.platforms:  # unsigned themselves, pinned by the signed index
        child = platform.manifest_digest
        status, answer = await get(http, daemon, registry, f"dev-team/multi/manifests/{child}")
        assert status == 200, answer
        assert stored(daemon, child)
    # The same child, held in the cache, asked for in another repository is another question:
    # no signature there, so not served from the cache either.
    arm = signed.multi.for_platform("linux/arm64").manifest_digest
    status, error = await get(http, daemon, registry, f"dev-team/other/manifests/{arm}")
    assert status == 403, error
    assert "no signature" in error["message"]


async def test_after_a_restart_a_child_of_a_verified_index_is_served_by_digest_alone(
    start_daemon: StartDaemon,
    registry: DistributionRegistry,
    signed: Signed,
    key_file: Path,
    http: aiohttp.ClientSession,
) -> None:
    """Verdicts are in memory; which verified index pins a child is in the store's index, so
    a new process re-verifies that index (current keys) instead of refusing the child."""
    upstreams = {registry.host_port: [registry.url]}
    async with start_daemon(upstreams, **policy(registry, key_file)) as first:
        status, answer = await get(http, first, registry, "dev-team/multi/manifests/v1")
        assert status == 200, answer  # the index only: no child asked before the restart
    arm = signed.multi.for_platform("linux/arm64").manifest_digest
    async with start_daemon(upstreams, **policy(registry, key_file)) as second:
        status, answer = await get(http, second, registry, f"dev-team/multi/manifests/{arm}")
        assert status == 200, answer
        assert answer["digest"] == arm
        status, error = await get(http, second, registry, f"dev-team/other/manifests/{arm}")
        assert status == 403, "coverage is per repository"
    await asyncio.to_thread(key_file.write_bytes, signed.other_pem)  # key no longer configured
    async with start_daemon(upstreams, **policy(registry, key_file)) as third:
        status, error = await get(http, third, registry, f"dev-team/multi/manifests/{arm}")
        assert status == 403, "only the relation persists, never a verdict"
        assert "no signature" in error["message"]


async def test_allow_refuses_other_repositories_with_no_upstream_request(
    daemon: Daemon, registry: DistributionRegistry, signed: Signed, http: aiohttp.ClientSession
) -> None:
    secret = signed.secret
    quiet = wait_until_quiet(registry)
    paths = [
        "secret/app/manifests/v1",
        f"secret/app/manifests/{secret.digest}",
        f"secret/app/blobs/{secret.single.layer_digests[0]}",
        "secret/app/tags/list",
        f"secret/app/referrers/{secret.digest}",
        "dev-team/app/nested/manifests/v1",  # '*' is one level
    ]
    for path in paths:
        status, error = await get(http, daemon, registry, path)
        assert status == 403, (path, error)
        assert error["code"] == "DENIED"
        assert f"registries.{registry.host_port}.allow: [dev-team/*]" in error["message"], error
    assert wait_until_quiet(registry) == quiet, "a refused repository reached the registry"
    assert decisions(daemon, registry, "denied_allow") == len(paths)
    assert not stored(daemon, secret.digest)
    # Prewarm refuses it the same way.
    job = daemon.parts.prewarm.submit([f"{registry.host_port}/secret/app:v1"], None, False)
    for _ in range(200):
        if job.state not in ("queued", "running"):
            break
        await asyncio.sleep(0.02)
    assert job.state == "failed"
    assert "allow: [dev-team/*]" in (job.images[0].reason or "")
    assert wait_until_quiet(registry) == quiet


async def test_refusals_are_in_the_access_log_with_their_rule(
    daemon: Daemon, registry: DistributionRegistry, signed: Signed, http: aiohttp.ClientSession,
    caplog: pytest.LogCaptureFixture,
) -> None:  # fmt: skip
    caplog.set_level(logging.INFO, logger="cachesvc.access")
    await get(http, daemon, registry, "secret/app/manifests/v1")
    await get(http, daemon, registry, "dev-team/app/manifests/unsigned")
    lines = [getattr(r, "fields", {}) for r in caplog.records if r.name == "cachesvc.access"]
    by_repo = {line["repository"]: line for line in lines}
    assert by_repo["secret/app"]["policy"] == "allow"
    assert by_repo["secret/app"]["status"] == 403
    assert by_repo["dev-team/app"]["policy"] == "verify"
    assert "no signature" in by_repo["dev-team/app"]["error"]


async def test_a_refusal_is_rechecked_after_negative_ttl(
    daemon: Daemon, registry: DistributionRegistry, signed: Signed, http: aiohttp.ClientSession,
    clock: AdvancingClock,
) -> None:  # fmt: skip
    path = "dev-team/app/manifests/late"
    assert (await get(http, daemon, registry, path))[0] == 403
    # The signature is pushed after the image (as CI pipelines often do).
    cosign.sign_simple(signed.layout, registry, "dev-team/app", signed.late, signed.release)
    assert (await get(http, daemon, registry, path))[0] == 403, "the refusal is remembered"
    clock.advance(31)  # the registry's negative_ttl
    status, answer = await get(http, daemon, registry, path)
    assert status == 200, answer
    assert answer["digest"] == signed.late.digest


def swap_to_other_key(key_file: Path, signed: Signed) -> None:
    """Make the configured key path a kubelet-style symlink into ..data holding ``other``."""
    keys = key_file.parent
    new = keys / "..2026_12_01"
    new.mkdir()
    (new / "release.pub").write_bytes(signed.release_pem)
    (new / "other.pub").write_bytes(signed.other_pem)
    key_file.unlink()
    (keys / "..data").symlink_to(new.name)
    key_file.symlink_to("..data/other.pub")


async def test_verify_keys_are_reread_when_their_file_changes(
    daemon: Daemon, registry: DistributionRegistry, signed: Signed, http: aiohttp.ClientSession,
    clock: AdvancingClock, key_file: Path,
) -> None:  # fmt: skip
    good = "dev-team/app/manifests/good"
    stranger = "dev-team/app/manifests/stranger"
    assert (await get(http, daemon, registry, good))[0] == 200
    assert (await get(http, daemon, registry, stranger))[0] == 403
    # Rotation, as a kubelet Secret update does it: ..data swapped to a new directory.
    swap_to_other_key(key_file, signed)
    clock.advance(2)
    assert (await get(http, daemon, registry, stranger))[0] == 200
    status, error = await get(http, daemon, registry, good)
    assert status == 403, "the removed key still verifies"
    assert "unknown key" in error["message"]


async def test_warn_mode_serves_caches_and_logs(
    start_daemon: StartDaemon, registry: DistributionRegistry, signed: Signed,
    key_file: Path, http: aiohttp.ClientSession, caplog: pytest.LogCaptureFixture,
) -> None:  # fmt: skip
    config = policy(registry, key_file, mode="warn")
    async with start_daemon({registry.host_port: [registry.url]}, **config) as daemon:
        status, answer = await get(http, daemon, registry, "dev-team/app/manifests/unsigned")
        assert status == 200
        assert answer["digest"] == signed.unsigned.digest
        assert stored(daemon, signed.unsigned.digest)
        assert decisions(daemon, registry, "warned") >= 1
    assert any("mode warn" in r.getMessage() for r in caplog.records)
