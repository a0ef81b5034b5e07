"""cosign's classic signatures: the ``sha256-<hex>.sig`` tag beside the image.

What ``cosign sign --key`` writes (without ``--new-bundle-format``), per image digest::

    <repo>:sha256-<hex>.sig ─▶ OCI manifest
        config  application/vnd.oci.image.config.v1+json (an empty image config)
        layers  one per signature, each
                  mediaType    application/vnd.dev.cosign.simplesigning.v1+json
                  annotations  dev.cosignproject.cosign/signature: base64(signature)
                  ─▶ payload {"critical": {"identity": {"docker-reference": "<repo>"},
                                           "image": {"docker-manifest-digest": "sha256:<hex>"},
                                           "type": "cosign container image signature"},
                              "optional": null}

The signature is over the exact payload bytes (never a re-serialisation), so the layer's
bytes are checked against the layer digest first. Only after a configured key accepts the
signature is the payload parsed and its claim compared with the image digest.

Use: fetch the manifest at :func:`signature_tag`, fetch the blobs that
:func:`signature_layers` lists, then call :func:`verify_simple_signing`.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping, Sequence

from cachesvc.oci.image import Descriptor

from .keys import PublicKey
from .payload import MAX_BLOB_BYTES, ArtifactError, check_blob, parse_json_object, read_manifest
from .verdict import Reason, Verdict, combine

__all__ = [
    "COSIGN_SIGNATURE_TYPE",
    "SIGNATURE_ANNOTATION",
    "SIMPLE_SIGNING_MEDIA_TYPE",
    "signature_layers",
    "signature_tag",
    "verify_simple_signing",
]

SIMPLE_SIGNING_MEDIA_TYPE = "application/vnd.dev.cosign.simplesigning.v1+json"
SIGNATURE_ANNOTATION = "dev.cosignproject.cosign/signature"
COSIGN_SIGNATURE_TYPE = "cosign container image signature"
VIA = "simple signing"


def signature_tag(digest: str) -> str:
    """The tag cosign stores ``digest``'s signatures under: ``sha256-<hex>.sig``."""
    algorithm, _, hexdigest = digest.partition(":")
    return f"{algorithm}-{hexdigest}.sig"


def signature_layers(manifest: bytes) -> list[Descriptor]:
    """The simple-signing layers of a ``.sig`` manifest, to fetch before verifying.

    Layers of other media types are not signatures and are left out; ``ArtifactError`` for a
    manifest that cannot be read or lists a layer larger than ``MAX_BLOB_BYTES``.
    """
    layers = [
        d
        for d in read_manifest(manifest, "signature manifest").layers
        if d.media_type == SIMPLE_SIGNING_MEDIA_TYPE
    ]
    for layer in layers:
        if layer.size > MAX_BLOB_BYTES:
            raise ArtifactError(f"signature layer {layer.digest}: {layer.size} bytes, too large")
    return layers


def verify_simple_signing(
    digest: str, manifest: bytes, blobs: Mapping[str, bytes], keys: Sequence[PublicKey]
) -> Verdict:
    """Whether a signature in the ``.sig`` ``manifest`` by one of ``keys`` covers ``digest``.

    ``blobs`` maps layer digests to their bytes (a missing one counts as a broken signature).
    """
    try:
        layers = signature_layers(manifest)
    except ArtifactError as exc:
        return Verdict.refused(digest, Reason.BAD_SIGNATURE, str(exc), via=VIA)
    if not layers:
        return Verdict.refused(
            digest, Reason.NO_SIGNATURE, f"{signature_tag(digest)} has no signature layer", via=VIA
        )
    return combine(digest, (_verify_layer(digest, layer, blobs, keys) for layer in layers))


def _verify_layer(
    digest: str, layer: Descriptor, blobs: Mapping[str, bytes], keys: Sequence[PublicKey]
) -> Verdict:
    def refuse(reason: Reason, detail: str) -> Verdict:
        return Verdict.refused(digest, reason, f"layer {layer.digest}: {detail}", via=VIA)

    payload = blobs.get(str(layer.digest))
    if payload is None:
        return refuse(Reason.BAD_SIGNATURE, "payload not available")
    try:
        check_blob(layer, payload)
    except ArtifactError as exc:
        return refuse(Reason.BAD_SIGNATURE, f"payload does not match its descriptor ({exc})")
    encoded = layer.annotations.get(SIGNATURE_ANNOTATION)
    if not encoded:
        return refuse(Reason.BAD_SIGNATURE, f"no {SIGNATURE_ANNOTATION} annotation")
    try:
        signature = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError):
        return refuse(Reason.BAD_SIGNATURE, "the signature annotation is not base64")
    key = next((k for k in keys if k.verify(signature, payload)), None)
    if key is None:
        return refuse(
            Reason.UNKNOWN_KEY,
            f"verifies under none of the {len(keys)} configured keys "
            "(made with another key, or altered)",
        )
    try:
        claimed = _claimed_digest(payload)
    except ArtifactError as exc:
        return refuse(Reason.BAD_SIGNATURE, str(exc))
    if claimed != digest:
        return refuse(Reason.WRONG_DIGEST, f"signed by {key.name} for {claimed}")
    return Verdict.verified(digest, key=key.name, via=VIA)


def _claimed_digest(payload: bytes) -> str:
    """The ``critical.image.docker-manifest-digest`` of a signed payload of cosign's type."""
    document = parse_json_object(payload, "simple-signing payload", MAX_BLOB_BYTES)
    critical = document.get("critical")
    if not isinstance(critical, dict):
        raise ArtifactError("simple-signing payload: no critical section")
    if critical.get("type") != COSIGN_SIGNATURE_TYPE:
        raise ArtifactError(f"simple-signing payload: critical.type is {critical.get('type')!r}")
    image = critical.get("image")
    claimed = image.get("docker-manifest-digest") if isinstance(image, dict) else None
    if not isinstance(claimed, str):
        raise ArtifactError("simple-signing payload: no critical.image.docker-manifest-digest")
    return claimed
