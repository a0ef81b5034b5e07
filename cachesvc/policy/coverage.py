"""A signed image index covers its platform manifests.

containerd resolves a tag to an index, then fetches the platform manifest by digest. The
index's signature covers the index bytes, and those bytes pin every child digest, so a child
of a verified index needs no signature of its own. The caller records the children's
verdicts (:meth:`Verdict.covering`) once the index itself is verified.
"""

from __future__ import annotations

from .artifact import ArtifactError, parse_descriptors, parse_json_object

__all__ = ["INDEX_MEDIA_TYPES", "covered_manifests"]

INDEX_MEDIA_TYPES = frozenset(
    {
        "application/vnd.oci.image.index.v1+json",
        "application/vnd.docker.distribution.manifest.list.v2+json",
    }
)


def covered_manifests(index: bytes) -> tuple[str, ...]:
    """The child manifest digests of a (verified) image index, in index order.

    ``ArtifactError`` for bytes that are not an image index. An index without a
    ``mediaType`` is accepted when it lists ``manifests`` (the OCI spec makes the field
    optional); a manifest (``layers``) is not an index and covers nothing.
    """
    document = parse_json_object(index, "image index")
    media_type = document.get("mediaType")
    if media_type is not None and media_type not in INDEX_MEDIA_TYPES:
        raise ArtifactError(f"image index: mediaType {media_type!r} is not an index")
    if "layers" in document:
        raise ArtifactError("image index: has layers, so it is a manifest")
    children = parse_descriptors(document, "manifests", "image index")
    return tuple(dict.fromkeys(d.digest for d in children))
