"""A signed image index covers its platform manifests.

containerd resolves a tag to an index, then fetches the platform manifest by digest. The
index's signature covers the index bytes, and those bytes pin every child digest, so a child
of a verified index needs no signature of its own. The caller records the children's
verdicts (:meth:`Verdict.covering`) once the index itself is verified.
"""

from __future__ import annotations

from cachesvc.oci.media import INDEX_MEDIA_TYPES

from .payload import read_index

__all__ = ["INDEX_MEDIA_TYPES", "covered_manifests"]


def covered_manifests(index: bytes) -> tuple[str, ...]:
    """The child manifest digests of a (verified) image index, in index order.

    ``ArtifactError`` for bytes that are not an image index. An index without a
    ``mediaType`` is accepted when it lists ``manifests`` (the OCI spec makes the field
    optional); a manifest (``layers``) is not an index and covers nothing.
    """
    children = read_index(index, "image index").manifests
    return tuple(dict.fromkeys(str(d.digest) for d in children))
