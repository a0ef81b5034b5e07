"""Offline cosign verification of one image digest, from artifacts the caller fetched.

No I/O here: the caller (the mirror's policy step) fetches, from the image's own repository,

1. the manifest at tag :func:`signature_tag` (``sha256-<hex>.sig``), if any;
2. the referrers index (``/v2/<repo>/referrers/<digest>``, or the tag :func:`referrers_tag`
   ``sha256-<hex>`` on a registry without the referrers API), and of it the bundle manifests
   that :func:`bundle_referrers` lists;
3. the blobs that :func:`blobs_to_fetch` names (each at most ``MAX_BLOB_BYTES``),

puts them in :class:`Evidence`, and asks :func:`verify_image`. Any one signature by any one
configured key whose claim names the digest verifies it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from .bundle import bundle_layer, verify_bundle
from .keys import PublicKey
from .payload import MAX_BLOB_BYTES, ArtifactError
from .referrers import bundle_referrers, referrers_tag
from .simplesigning import signature_layers, signature_tag, verify_simple_signing
from .verdict import Verdict, combine

__all__ = [
    "MAX_BLOB_BYTES",
    "Evidence",
    "blobs_to_fetch",
    "bundle_referrers",
    "referrers_tag",
    "signature_tag",
    "verify_image",
]


@dataclass(frozen=True, slots=True)
class Evidence:
    """The signature artifacts found for one image digest."""

    signature_manifest: bytes | None = None
    """The manifest at ``sha256-<hex>.sig``; None when the tag does not exist."""
    bundle_manifests: Sequence[bytes] = ()
    """The bundle referrer manifests (fetched by the digests the referrers index lists)."""
    blobs: Mapping[str, bytes] = field(default_factory=dict)
    """Signature layers and bundles by digest."""


def blobs_to_fetch(
    signature_manifest: bytes | None, bundle_manifests: Sequence[bytes]
) -> list[str]:
    """The digests of the blobs verification needs; unreadable manifests contribute none
    (:func:`verify_image` reports them)."""
    wanted: list[str] = []
    if signature_manifest is not None:
        with contextlib.suppress(ArtifactError):
            wanted += [str(layer.digest) for layer in signature_layers(signature_manifest)]
    for manifest in bundle_manifests:
        with contextlib.suppress(ArtifactError):
            wanted.append(str(bundle_layer(manifest).digest))
    return list(dict.fromkeys(wanted))


def verify_image(digest: str, evidence: Evidence, keys: Sequence[PublicKey]) -> Verdict:
    """The verdict for ``digest``: verified by the first signature a configured key accepts
    for it, else the most telling refusal (no artifacts at all: ``NO_SIGNATURE``)."""
    if not keys:
        raise ValueError("verification needs at least one key")
    verdicts: list[Verdict] = []
    if evidence.signature_manifest is not None:
        verdicts.append(
            verify_simple_signing(digest, evidence.signature_manifest, evidence.blobs, keys)
        )
        if verdicts[-1].ok:
            return verdicts[-1]
    for manifest in evidence.bundle_manifests:
        verdicts.append(verify_bundle(digest, manifest, evidence.blobs, keys))
        if verdicts[-1].ok:
            return verdicts[-1]
    return combine(digest, verdicts)
