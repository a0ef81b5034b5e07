"""Signatures in cosign's format, pushed into the real distribution registry, fetched back
through its HTTP API and verified offline (what the mirror's policy step will do)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from cachesvc.policy import (
    Evidence,
    PublicKey,
    Reason,
    Verdict,
    blobs_to_fetch,
    covered_manifests,
    load_public_key,
    verify_image,
)
from cachesvc.policy.referrers import bundle_referrers, referrers_tag
from cachesvc.policy.simplesigning import signature_tag
from tests.peers import cosign
from tests.peers.cosign import image, sign_bundle, sign_simple
from tests.peers.images import (
    OCI_INDEX,
    OCI_MANIFEST,
    OCIImage,
    build_index,
    push,
)
from tests.peers.registry import DistributionRegistry
from tests.peers_fixtures import registry

__all__ = ["registry"]  # fixture imported for pytest

pytestmark = [pytest.mark.peers, pytest.mark.timeout(120)]

ACCEPT = f"{OCI_MANIFEST}, {OCI_INDEX}"


@pytest.fixture(scope="module")
def release() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


@pytest.fixture(scope="module")
def other() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def key(private: ec.EllipticCurvePrivateKey, name: str) -> PublicKey:
    return load_public_key(cosign.public_pem(private), name=name)


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


async def get(session: aiohttp.ClientSession, url: str) -> bytes | None:
    async with session.get(url, headers={"Accept": ACCEPT}) as resp:
        if resp.status == 404:
            return None
        resp.raise_for_status()
        return await resp.read()


async def evidence_for(
    session: aiohttp.ClientSession, reg: DistributionRegistry, repo: str, digest: str
) -> Evidence:
    """Fetch what verification needs, as the mirror will: the .sig tag, the referrers tag
    fallback index (registry 2.8 has no referrers API), its bundle manifests, their blobs."""
    base = f"{reg.url}/v2/{repo}"
    sig = await get(session, f"{base}/manifests/{signature_tag(digest)}")
    index = await get(session, f"{base}/manifests/{referrers_tag(digest)}")
    bundles: list[bytes] = []
    for descriptor in bundle_referrers(index) if index is not None else []:
        manifest = await get(session, f"{base}/manifests/{descriptor.digest}")
        assert manifest is not None
        bundles.append(manifest)
    blobs = {}
    for blob in blobs_to_fetch(sig, bundles):
        data = await get(session, f"{base}/blobs/{blob}")
        assert data is not None
        blobs[blob] = data
    return Evidence(sig, bundles, blobs)


async def test_signed_index_verifies_and_covers_its_platforms(
    tmp_path: Path,
    registry: DistributionRegistry,
    session: aiohttp.ClientSession,
    release: ec.EllipticCurvePrivateKey,
) -> None:
    repo = "dev-team/multi"
    signed = build_index(tmp_path, "v1")
    push(signed, None, registry.ref(repo, "v1"))
    sign_simple(tmp_path, registry, repo, signed, release)
    keys = [key(release, "release.pub")]
    verdict = verify_image(
        signed.digest, await evidence_for(session, registry, repo, signed.digest), keys
    )
    assert verdict == Verdict.verified(signed.digest, key="release.pub", via="simple signing")
    index_bytes = await get(session, f"{registry.url}/v2/{repo}/manifests/{signed.digest}")
    assert index_bytes is not None
    children = covered_manifests(index_bytes)
    assert set(children) == {p.manifest_digest for p in signed.platforms}
    arm = signed.for_platform("linux/arm64").manifest_digest
    alone = verify_image(arm, await evidence_for(session, registry, repo, arm), keys)
    assert alone.reason is Reason.NO_SIGNATURE, "the child has no signature of its own"


async def test_refusals_through_the_registry(
    tmp_path: Path,
    registry: DistributionRegistry,
    session: aiohttp.ClientSession,
    release: ec.EllipticCurvePrivateKey,
    other: ec.EllipticCurvePrivateKey,
) -> None:
    repo = "dev-team/app"
    keys = [key(release, "release.pub")]
    good = image(tmp_path, registry, repo, "good", 1)
    sign_simple(tmp_path, registry, repo, good, release)
    unsigned = image(tmp_path, registry, repo, "unsigned", 2)
    tampered = image(tmp_path, registry, repo, "tampered", 3)
    sign_simple(tmp_path, registry, repo, tampered, release, tamper=True)
    copied = image(tmp_path, registry, repo, "copied", 4)
    sign_simple(tmp_path, registry, repo, copied, release, claim=good.digest)

    async def verdict(img: OCIImage, with_keys: list[PublicKey] = keys) -> Verdict:
        return verify_image(
            img.digest, await evidence_for(session, registry, repo, img.digest), with_keys
        )

    assert (await verdict(good)).ok
    assert (await verdict(unsigned)).reason is Reason.NO_SIGNATURE
    assert (await verdict(tampered)).reason is Reason.UNKNOWN_KEY, "no hint: altered or another key"
    refused = await verdict(copied)
    assert refused.reason is Reason.WRONG_DIGEST
    assert good.digest in refused.message()
    assert (await verdict(good, [key(other, "other.pub")])).reason is Reason.UNKNOWN_KEY


async def test_bundle_via_referrers_tag_fallback(
    tmp_path: Path,
    registry: DistributionRegistry,
    session: aiohttp.ClientSession,
    release: ec.EllipticCurvePrivateKey,
    other: ec.EllipticCurvePrivateKey,
) -> None:
    repo = "platform/svc/api"
    keys = [key(release, "release.pub")]
    signed = image(tmp_path, registry, repo, "signed", 11)
    sign_bundle(tmp_path, registry, repo, signed, release)
    tampered = image(tmp_path, registry, repo, "tampered", 12)
    sign_bundle(tmp_path, registry, repo, tampered, release, tamper=True)
    stranger = image(tmp_path, registry, repo, "stranger", 13)
    sign_bundle(tmp_path, registry, repo, stranger, other)

    index = await get(session, f"{registry.url}/v2/{repo}/manifests/{referrers_tag(signed.digest)}")
    assert index is not None
    assert json.loads(index)["manifests"][0]["artifactType"] == cosign.BUNDLE_V03

    async def verdict(img: OCIImage) -> Verdict:
        return verify_image(
            img.digest, await evidence_for(session, registry, repo, img.digest), keys
        )

    assert await verdict(signed) == Verdict.verified(
        signed.digest, key="release.pub", via="sigstore bundle"
    )
    assert (await verdict(tampered)).reason is Reason.BAD_SIGNATURE, "its hint names our key"
    assert (await verdict(stranger)).reason is Reason.UNKNOWN_KEY
