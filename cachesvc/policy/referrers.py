"""Finding sigstore bundles among an image's referrers.

cosign 3 (``cosign sign --key``, new bundle format by default) pushes each signature as a
referrer of the image: a manifest whose ``subject`` is the image and whose ``artifactType`` is
``application/vnd.dev.sigstore.bundle.v0.3+json``. A registry answers
``GET /v2/<repo>/referrers/<digest>`` with an image index of such descriptors; one without the
referrers API gets the same index pushed at the tag ``sha256-<hex>`` (the OCI distribution
spec's tag fallback). Either way the index is what :func:`bundle_referrers` reads.

An entry without ``artifactType`` is kept as a candidate: tools that re-serialise an index
with an older image-spec (skopeo 1.9's containers/image, for one) cannot write the field, and
the bundle manifest itself says what it is (:func:`cachesvc.policy.bundle.bundle_layer`
checks). Entries of another ``artifactType`` (SBOMs, attestations) are never fetched.
"""

from __future__ import annotations

from cachesvc.oci.image import Descriptor

from .payload import read_index

__all__ = ["BUNDLE_ARTIFACT_TYPE", "bundle_referrers", "referrers_tag"]

BUNDLE_ARTIFACT_TYPE = "application/vnd.dev.sigstore.bundle.v0.3+json"


def referrers_tag(digest: str) -> str:
    """The referrers tag-fallback tag for ``digest``: ``sha256-<hex>``."""
    algorithm, _, hexdigest = digest.partition(":")
    return f"{algorithm}-{hexdigest}"


def bundle_referrers(index: bytes) -> list[Descriptor]:
    """The manifests of a referrers index that may be bundles: ``artifactType`` bundle v0.3 or
    none; ``ArtifactError`` when the index cannot be read."""
    return [
        d
        for d in read_index(index, "referrers index").manifests
        if d.artifact_type in (BUNDLE_ARTIFACT_TYPE, "")
    ]
