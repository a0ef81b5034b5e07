"""Sigstore bundle v0.3 signatures, as ``cosign sign --key`` writes them since cosign 3.

A bundle referrer (found with :mod:`cachesvc.policy.referrers`)::

    OCI manifest  artifactType application/vnd.dev.sigstore.bundle.v0.3+json
                  config       application/vnd.oci.empty.v1+json ({})
                  subject      the image
                  layers[0]    application/vnd.dev.sigstore.bundle.v0.3+json ─▶ bundle JSON:
    {"mediaType": "application/vnd.dev.sigstore.bundle.v0.3+json",
     "verificationMaterial": {"publicKey": {"hint": base64(sha256(DER SPKI))}, ...},
     "dsseEnvelope": {"payload": base64(statement), "payloadType": "application/vnd.in-toto+json",
                      "signatures": [{"sig": base64(signature over PAE)}]}}
    statement: {"_type": "https://in-toto.io/Statement/v1",
                "subject": [{"digest": {"sha256": "<hex>"}}],
                "predicateType": "https://sigstore.dev/cosign/sign/v1", "predicate": {}}

The signature is over DSSE's pre-authentication encoding of the payload type and the exact
payload bytes. Transparency-log entries and timestamps are not checked (offline, like
``cosign verify --insecure-ignore-tlog``). Only cosign's signing predicate counts: an
attestation (SBOM, provenance) by the same key describes the image, it does not approve it.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping, Sequence
from typing import Any

from cachesvc.oci.image import Descriptor

from .keys import PublicKey
from .payload import (
    MAX_BLOB_BYTES,
    MAX_SIGNATURES,
    ArtifactError,
    check_blob,
    parse_json_object,
    read_manifest,
)
from .referrers import BUNDLE_ARTIFACT_TYPE
from .verdict import Reason, Verdict

__all__ = [
    "BUNDLE_MEDIA_TYPES",
    "COSIGN_SIGN_PREDICATE",
    "INTOTO_PAYLOAD_TYPE",
    "bundle_layer",
    "pae",
    "verify_bundle",
]

BUNDLE_MEDIA_TYPES = frozenset(
    {BUNDLE_ARTIFACT_TYPE, "application/vnd.dev.sigstore.bundle+json;version=0.3"}
)
INTOTO_PAYLOAD_TYPE = "application/vnd.in-toto+json"
COSIGN_SIGN_PREDICATE = "https://sigstore.dev/cosign/sign/v1"
_STATEMENT_TYPES = frozenset(
    {"https://in-toto.io/Statement/v1", "https://in-toto.io/Statement/v0.1"}
)
VIA = "sigstore bundle"


def pae(payload_type: str, payload: bytes) -> bytes:
    """DSSE's pre-authentication encoding: what the signature is over."""
    kind = payload_type.encode()
    return b"DSSEv1 %d %b %d %b" % (len(kind), kind, len(payload), payload)


def bundle_layer(manifest: bytes) -> Descriptor:
    """The one bundle layer of a bundle referrer manifest, to fetch before verifying."""
    parsed = read_manifest(manifest, "bundle manifest")
    if parsed.artifact_type != BUNDLE_ARTIFACT_TYPE:
        raise ArtifactError(f"bundle manifest: artifactType {parsed.artifact_type!r}")
    layers = parsed.layers
    if len(layers) != 1 or layers[0].media_type not in BUNDLE_MEDIA_TYPES:
        raise ArtifactError("bundle manifest: not exactly one bundle layer")
    if layers[0].size > MAX_BLOB_BYTES:
        raise ArtifactError(f"bundle {layers[0].digest}: {layers[0].size} bytes, too large")
    return layers[0]


def verify_bundle(
    digest: str, manifest: bytes, blobs: Mapping[str, bytes], keys: Sequence[PublicKey]
) -> Verdict:
    """Whether the bundle referrer ``manifest`` holds a signature by one of ``keys`` whose
    statement names ``digest``; ``blobs`` maps the bundle layer's digest to its bytes."""
    try:
        layer = bundle_layer(manifest)
        data = blobs.get(str(layer.digest))
        if data is None:
            raise ArtifactError(f"bundle {layer.digest}: not available")
        check_blob(layer, data)
        envelope, hint = _envelope(data)
        payload, signatures = _payload_and_signatures(envelope)
    except ArtifactError as exc:
        return Verdict.refused(digest, Reason.BAD_SIGNATURE, str(exc), via=VIA)
    message = pae(INTOTO_PAYLOAD_TYPE, payload)
    key = next((k for k in keys for s in signatures if k.verify(s, message)), None)
    if key is None:
        return _unverified(digest, hint, keys)
    try:
        return _check_statement(digest, payload, key)
    except ArtifactError as exc:
        return Verdict.refused(digest, Reason.BAD_SIGNATURE, str(exc), via=VIA)


def _envelope(data: bytes) -> tuple[dict[str, Any], str]:
    """The DSSE envelope of a bundle and its key hint ('' when it has none)."""
    bundle = parse_json_object(data, "bundle", MAX_BLOB_BYTES)
    if bundle.get("mediaType") not in BUNDLE_MEDIA_TYPES:
        raise ArtifactError(f"bundle: mediaType {bundle.get('mediaType')!r} is not v0.3")
    envelope = bundle.get("dsseEnvelope")
    if not isinstance(envelope, dict):
        raise ArtifactError("bundle: no dsseEnvelope (a message signature is not for images)")
    material = bundle.get("verificationMaterial")
    public_key = material.get("publicKey") if isinstance(material, dict) else None
    hint = public_key.get("hint") if isinstance(public_key, dict) else None
    return envelope, hint if isinstance(hint, str) else ""


def _b64(value: object, what: str) -> bytes:
    """Protobuf JSON bytes: standard base64, or the URL-safe form its parsers also accept."""
    if not isinstance(value, str):
        raise ArtifactError(f"bundle: {what} is not a string")
    try:
        if "-" in value or "_" in value:
            return base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ArtifactError(f"bundle: {what} is not base64") from exc


def _payload_and_signatures(envelope: Mapping[str, Any]) -> tuple[bytes, list[bytes]]:
    if envelope.get("payloadType") != INTOTO_PAYLOAD_TYPE:
        raise ArtifactError(f"bundle: payloadType {envelope.get('payloadType')!r}")
    payload = _b64(envelope.get("payload"), "payload")
    raw = envelope.get("signatures")
    if not isinstance(raw, list) or not raw or len(raw) > MAX_SIGNATURES:
        raise ArtifactError("bundle: no signatures")
    signatures = [_b64(s.get("sig") if isinstance(s, dict) else None, "sig") for s in raw]
    return payload, signatures


def _unverified(digest: str, hint: str, keys: Sequence[PublicKey]) -> Verdict:
    """No key verified: the hint tells an altered signature from another key's."""
    named = next((k for k in keys if hint and k.hint == hint), None)
    if named is not None:
        detail = f"names configured key {named.name}, which does not verify it"
        return Verdict.refused(digest, Reason.BAD_SIGNATURE, detail, via=VIA)
    if hint:
        detail = f"key hint {hint} matches none of the {len(keys)} configured keys"
    else:
        detail = f"verifies under none of the {len(keys)} configured keys"
    return Verdict.refused(digest, Reason.UNKNOWN_KEY, detail, via=VIA)


def _check_statement(digest: str, payload: bytes, key: PublicKey) -> Verdict:
    """Compare the signed in-toto statement's subject with ``digest``."""
    statement = parse_json_object(payload, "in-toto statement", MAX_BLOB_BYTES)
    if statement.get("_type") not in _STATEMENT_TYPES:
        raise ArtifactError(f"in-toto statement: _type {statement.get('_type')!r}")
    predicate = statement.get("predicateType")
    if predicate != COSIGN_SIGN_PREDICATE:
        detail = f"an attestation ({predicate!r}) by {key.name}, not a signature"
        return Verdict.refused(digest, Reason.NO_SIGNATURE, detail, via=VIA)
    subjects = statement.get("subject")
    if not isinstance(subjects, list) or not subjects:
        raise ArtifactError("in-toto statement: no subject")
    algorithm, _, hexdigest = digest.partition(":")
    claimed: list[str] = []
    for subject in subjects:
        digests = subject.get("digest") if isinstance(subject, dict) else None
        value = digests.get(algorithm) if isinstance(digests, dict) else None
        if value == hexdigest:
            return Verdict.verified(digest, key=key.name, via=VIA)
        if isinstance(value, str):
            claimed.append(f"{algorithm}:{value}")
    detail = f"signed by {key.name} for {', '.join(claimed) or 'no ' + algorithm + ' digest'}"
    return Verdict.refused(digest, Reason.WRONG_DIGEST, detail, via=VIA)
