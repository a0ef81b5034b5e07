"""Offline cosign verification against artifacts built in cosign's format with real keys."""

from __future__ import annotations

import base64
import json
import os
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed25519, rsa, x25519
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

from cachesvc.errors import ConfigError
from cachesvc.oci import Digest
from cachesvc.policy import (
    Evidence,
    PublicKey,
    PublicKeyError,
    Reason,
    Verdict,
    blobs_to_fetch,
    covered_manifests,
    load_public_key,
    read_key_file,
    verify_image,
)
from cachesvc.policy.bundle import verify_bundle
from cachesvc.policy.payload import ArtifactError
from cachesvc.policy.referrers import bundle_referrers, referrers_tag
from cachesvc.policy.simplesigning import signature_tag, verify_simple_signing
from tests.peers import cosign
from tests.peers.cosign import Artifact, PrivateKey


def digest_of(data: bytes) -> str:
    return str(Digest.of(data))


IMAGE = digest_of(b"the image manifest")
OTHER_IMAGE = digest_of(b"another image manifest")
REPO = "registry.example/dev-team/app"


def public(key: PrivateKey, name: str = "release.pub") -> PublicKey:
    return load_public_key(cosign.public_pem(key), name=name)


def sig_artifact(key: PrivateKey, digest: str = IMAGE, payload: bytes | None = None) -> Artifact:
    payload = payload if payload is not None else cosign.simple_signing_payload(digest, REPO)
    signature = base64.b64encode(cosign.sign_bytes(key, payload)).decode()
    return cosign.signature_manifest([(payload, signature)])


def simple(artifact: Artifact, keys: list[PublicKey], digest: str = IMAGE) -> Verdict:
    return verify_simple_signing(digest, artifact.manifest, artifact.all_blobs(), keys)


def bundle_artifact(key: PrivateKey, digest: str = IMAGE, **kwargs: object) -> Artifact:
    predicate = str(kwargs.pop("predicate", cosign.COSIGN_SIGN_PREDICATE))
    data = cosign.bundle_json(cosign.statement(digest, predicate), key, **kwargs)  # type: ignore[arg-type]  # tamper knobs
    subject = {
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "size": 1,
        "digest": digest,
    }
    return cosign.bundle_referrer(subject, data)


def bundled(artifact: Artifact, keys: list[PublicKey], digest: str = IMAGE) -> Verdict:
    return verify_bundle(digest, artifact.manifest, artifact.all_blobs(), keys)


@pytest.fixture(scope="module")
def p256() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


@pytest.fixture(scope="module")
def stranger() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


# -- keys ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("make", "algorithm"),
    [
        (lambda: ec.generate_private_key(ec.SECP256R1()), "ecdsa-p256"),
        (lambda: ec.generate_private_key(ec.SECP384R1()), "ecdsa-p384"),
        (lambda: ec.generate_private_key(ec.SECP521R1()), "ecdsa-p521"),
        (ed25519.Ed25519PrivateKey.generate, "ed25519"),
        (lambda: rsa.generate_private_key(65537, 2048), "rsa-2048"),
    ],
)
def test_each_key_type_verifies_its_own_signature_only(make: object, algorithm: str) -> None:
    key: PrivateKey = make()  # type: ignore[operator]  # a key factory
    loaded = public(key)
    assert loaded.algorithm == algorithm
    assert loaded.hint == cosign.key_hint(key)
    signature = cosign.sign_bytes(key, b"payload")
    assert loaded.verify(signature, b"payload")
    assert not loaded.verify(signature, b"payload!")
    assert not loaded.verify(b"\x00" * len(signature), b"payload")
    verdict = simple(sig_artifact(key), [loaded])
    assert verdict.ok, verdict.message()


def test_ecdsa_accepts_raw_r_s_as_well_as_der(p256: ec.EllipticCurvePrivateKey) -> None:
    r, s = decode_dss_signature(cosign.sign_bytes(p256, b"data"))
    raw = r.to_bytes(32, "big") + s.to_bytes(32, "big")
    assert public(p256).verify(raw, b"data")
    assert not public(p256).verify(raw, b"other")


@pytest.mark.parametrize(
    ("pem", "expected"),
    [
        (b"not pem at all", "not a PEM public key"),
        (
            ec.generate_private_key(ec.SECP192R1())
            .public_key()
            .public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            ),
            "ECDSA curve secp192r1",
        ),
        (
            rsa.generate_private_key(65537, 1024)  # noqa: S505  # the key to refuse
            .public_key()
            .public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            ),
            "RSA key of 1024 bits",
        ),
        (
            x25519.X25519PrivateKey.generate()
            .public_key()
            .public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            ),
            "X25519PublicKey keys are not supported",
        ),
        (
            dsa.generate_private_key(2048)
            .public_key()
            .public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            ),
            "keys are not supported",
        ),
        (b"-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n", "a certificate"),
    ],
)
def test_unusable_key_is_a_config_error_naming_file_and_key(pem: bytes, expected: str) -> None:
    with pytest.raises(PublicKeyError, match=expected) as info:
        load_public_key(pem, name="/etc/keys/k.pub", config_key="registries.r.verify.keys[0]")
    assert isinstance(info.value, ConfigError)
    assert str(info.value).startswith("registries.r.verify.keys[0]: /etc/keys/k.pub: ")


def test_key_file_reading(tmp_path: Path, p256: ec.EllipticCurvePrivateKey) -> None:
    good = tmp_path / "cosign.pub"
    good.write_bytes(cosign.public_pem(p256))
    assert read_key_file(good).hint == cosign.key_hint(p256)
    with pytest.raises(PublicKeyError, match="cannot read"):
        read_key_file(tmp_path / "missing.pub", config_key="k")
    big = tmp_path / "big.pub"
    big.write_bytes(b"A" * 70_000)
    with pytest.raises(PublicKeyError, match="larger than"):
        read_key_file(big)
    fifo = tmp_path / "fifo.pub"
    os.mkfifo(fifo)
    with pytest.raises(PublicKeyError, match="not a regular file"):
        read_key_file(fifo)
    with pytest.raises(PublicKeyError, match="not a regular file"):
        read_key_file(tmp_path)


# -- simple signing ------------------------------------------------------------------------


def test_simple_signing_verified_names_key_and_source(p256: ec.EllipticCurvePrivateKey) -> None:
    verdict = simple(sig_artifact(p256), [public(p256, "old.pub"), public(p256, "new.pub")])
    assert verdict == Verdict.verified(IMAGE, key="old.pub", via="simple signing")
    assert signature_tag(IMAGE) == f"sha256-{IMAGE.removeprefix('sha256:')}.sig"


def test_simple_signing_refusals(
    p256: ec.EllipticCurvePrivateKey, stranger: ec.EllipticCurvePrivateKey
) -> None:
    keys = [public(p256)]
    assert simple(sig_artifact(stranger), keys).reason is Reason.UNKNOWN_KEY
    copied = simple(sig_artifact(p256, OTHER_IMAGE), keys)
    assert copied.reason is Reason.WRONG_DIGEST
    assert OTHER_IMAGE in copied.message()
    wrong_type = cosign.simple_signing_payload(IMAGE, REPO).replace(b"cosign container", b"x")
    assert simple(sig_artifact(p256, payload=wrong_type), keys).reason is Reason.BAD_SIGNATURE


def test_payload_not_matching_its_layer_digest_is_a_bad_signature(
    p256: ec.EllipticCurvePrivateKey,
) -> None:
    artifact = sig_artifact(p256)
    layer = json.loads(artifact.manifest)["layers"][0]["digest"]
    blobs = {**artifact.all_blobs(), layer: artifact.all_blobs()[layer] + b" "}
    verdict = verify_simple_signing(IMAGE, artifact.manifest, blobs, [public(p256)])
    assert verdict.reason is Reason.BAD_SIGNATURE
    assert "does not match its descriptor" in verdict.detail
    missing = verify_simple_signing(IMAGE, artifact.manifest, {}, [public(p256)])
    assert missing.reason is Reason.BAD_SIGNATURE


@pytest.mark.parametrize(
    ("annotation", "reason"),
    [
        ("", Reason.BAD_SIGNATURE),
        ("not base64!", Reason.BAD_SIGNATURE),
        (base64.b64encode(b"short").decode(), Reason.UNKNOWN_KEY),
    ],
)
def test_broken_signature_annotation(
    p256: ec.EllipticCurvePrivateKey, annotation: str, reason: Reason
) -> None:
    payload = cosign.simple_signing_payload(IMAGE, REPO)
    artifact = cosign.signature_manifest([(payload, annotation)])
    assert simple(artifact, [public(p256)]).reason is reason


def test_one_good_signature_among_several_verifies(
    p256: ec.EllipticCurvePrivateKey, stranger: ec.EllipticCurvePrivateKey
) -> None:
    payload = cosign.simple_signing_payload(IMAGE, REPO)
    other = cosign.simple_signing_payload(IMAGE, REPO + "-mirror")
    artifact = cosign.signature_manifest(
        [
            (payload, base64.b64encode(cosign.sign_bytes(stranger, payload)).decode()),
            (other, base64.b64encode(cosign.sign_bytes(p256, other)).decode()),
        ]
    )
    assert simple(artifact, [public(p256)]).ok
    assert simple(artifact, [public(stranger)]).ok
    assert blobs_to_fetch(artifact.manifest, []) == [digest_of(payload), digest_of(other)]


@pytest.mark.parametrize(
    "manifest",
    [
        b"\xff\xfe",
        b"[]",
        b'{"layers": "no"}',
        b'{"layers": [{"mediaType": "application/vnd.dev.cosign.simplesigning.v1+json", "digest": "sha256:xyz", "size": 1}]}',
        json.dumps({"layers": [{"mediaType": "m", "digest": IMAGE, "size": 1}] * 65}).encode(),
        json.dumps(
            {"layers": [{"mediaType": cosign.SIMPLE_SIGNING, "digest": IMAGE, "size": 2**30}]}
        ).encode(),
        b"[" * 100_000,
    ],
)
def test_malformed_signature_manifest_is_a_bad_signature_not_an_exception(
    p256: ec.EllipticCurvePrivateKey, manifest: bytes
) -> None:
    verdict = verify_simple_signing(IMAGE, manifest, {}, [public(p256)])
    assert verdict.reason is Reason.BAD_SIGNATURE
    assert blobs_to_fetch(manifest, [manifest]) == []


# -- sigstore bundles ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "make", [lambda: ec.generate_private_key(ec.SECP256R1()), ed25519.Ed25519PrivateKey.generate]
)
def test_bundle_verified(make: object) -> None:
    key: PrivateKey = make()  # type: ignore[operator]  # a key factory
    verdict = bundled(bundle_artifact(key), [public(key)])
    assert verdict == Verdict.verified(IMAGE, key="release.pub", via="sigstore bundle")


def test_bundle_refusals(
    p256: ec.EllipticCurvePrivateKey, stranger: ec.EllipticCurvePrivateKey
) -> None:
    keys = [public(p256)]
    tampered = bundled(bundle_artifact(p256, signature=cosign.sign_bytes(p256, b"x")), keys)
    assert tampered.reason is Reason.BAD_SIGNATURE
    assert "names configured key release.pub" in tampered.detail
    unknown = bundled(bundle_artifact(stranger), keys)
    assert unknown.reason is Reason.UNKNOWN_KEY
    assert cosign.key_hint(stranger) in unknown.detail
    assert bundled(bundle_artifact(p256, OTHER_IMAGE), keys).reason is Reason.WRONG_DIGEST
    attestation = bundled(bundle_artifact(p256, predicate="https://slsa.dev/provenance/v1"), keys)
    assert attestation.reason is Reason.NO_SIGNATURE
    assert "attestation" in attestation.detail


def test_bundle_without_dsse_or_wrong_version_is_bad(p256: ec.EllipticCurvePrivateKey) -> None:
    subject = {"mediaType": "m", "size": 1, "digest": IMAGE}
    for document in (
        {"mediaType": cosign.BUNDLE_V03, "messageSignature": {"signature": "AA=="}},
        {"mediaType": "application/vnd.dev.sigstore.bundle+json;version=0.1"},
        {"mediaType": cosign.BUNDLE_V03, "dsseEnvelope": {"payloadType": "text/plain"}},
    ):
        artifact = cosign.bundle_referrer(subject, json.dumps(document).encode())
        assert bundled(artifact, [public(p256)]).reason is Reason.BAD_SIGNATURE


def test_referrers_index_lists_bundle_candidates_only(p256: ec.EllipticCurvePrivateKey) -> None:
    bundle = bundle_artifact(p256)
    sbom = {"mediaType": "m", "size": 3, "digest": OTHER_IMAGE, "artifactType": "text/spdx"}
    bare = {"mediaType": "m", "size": 3, "digest": IMAGE}
    index = json.loads(cosign.referrers_index([bundle]).manifest)
    index["manifests"] += [sbom, bare]
    found = bundle_referrers(json.dumps(index).encode())
    assert [str(d.digest) for d in found] == [bundle.digest, IMAGE]
    assert referrers_tag(IMAGE) == "sha256-" + IMAGE.removeprefix("sha256:")
    with pytest.raises(ArtifactError):
        bundle_referrers(b'{"manifests": 3}')


# -- one image, all evidence ---------------------------------------------------------------


def test_verify_image_combines_sources(
    p256: ec.EllipticCurvePrivateKey, stranger: ec.EllipticCurvePrivateKey
) -> None:
    keys = [public(p256)]
    assert verify_image(IMAGE, Evidence(), keys).reason is Reason.NO_SIGNATURE
    bad_sig, good_bundle = sig_artifact(stranger), bundle_artifact(p256)
    evidence = Evidence(
        bad_sig.manifest,
        [good_bundle.manifest],
        {**bad_sig.all_blobs(), **good_bundle.all_blobs()},
    )
    assert verify_image(IMAGE, evidence, keys).via == "sigstore bundle"
    copied = bundle_artifact(p256, OTHER_IMAGE)
    evidence = Evidence(
        bad_sig.manifest, [copied.manifest], {**bad_sig.all_blobs(), **copied.all_blobs()}
    )
    verdict = verify_image(IMAGE, evidence, keys)
    assert verdict.reason is Reason.WRONG_DIGEST, "a trusted key's claim says most"
    assert verdict.message().startswith(
        f"digest claim for another image: {IMAGE} (sigstore bundle:"
    )
    with pytest.raises(ValueError, match="at least one key"):
        verify_image(IMAGE, evidence, [])


# -- signed index coverage -----------------------------------------------------------------


def test_signed_index_covers_its_children() -> None:
    a, b = digest_of(b"amd64"), digest_of(b"arm64")
    index = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [{"mediaType": "m", "digest": d, "size": 5} for d in (a, b, a)],
    }
    assert covered_manifests(json.dumps(index).encode()) == (a, b)
    verdict = Verdict.verified(IMAGE, key="k.pub", via="simple signing")
    assert verdict.covering(a) == Verdict.verified(a, key="k.pub", via=f"index {IMAGE}")
    with pytest.raises(ValueError, match="only a verified index"):
        Verdict.refused(IMAGE, Reason.NO_SIGNATURE, "none").covering(a)
    not_indexes: list[dict[str, object]] = [
        {"mediaType": "application/vnd.oci.image.manifest.v1+json", "layers": []},
        {"layers": [], "manifests": []},
        {"manifests": [{"digest": "sha256:short"}]},
    ]
    for not_index in not_indexes:
        with pytest.raises(ArtifactError):
            covered_manifests(json.dumps(not_index).encode())
