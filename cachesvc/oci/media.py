"""Manifest media types and the Accept sets clients send for them."""

from __future__ import annotations

import functools

MEDIA_OCI_INDEX = "application/vnd.oci.image.index.v1+json"
MEDIA_OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MEDIA_DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
MEDIA_DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
MANIFEST_MEDIA_TYPES = (
    MEDIA_OCI_INDEX,
    MEDIA_OCI_MANIFEST,
    MEDIA_DOCKER_LIST,
    MEDIA_DOCKER_MANIFEST,
)
INDEX_MEDIA_TYPES = (MEDIA_OCI_INDEX, MEDIA_DOCKER_LIST)
# What containerd sends when it resolves a reference (and what cachesvc asks upstream
# for by digest): every manifest type, then anything.
ACCEPT_ANY_MANIFEST = ", ".join((*MANIFEST_MEDIA_TYPES, "*/*"))
# What a client's Accept may contribute to the tag-cache key (a small, closed set).
ACCEPTABLE_MANIFEST_TYPES = frozenset(
    (
        *MANIFEST_MEDIA_TYPES,
        "application/vnd.docker.distribution.manifest.v1+prettyjws",
        "application/vnd.docker.distribution.manifest.v1+json",
        "application/vnd.oci.artifact.manifest.v1+json",
        "application/json",
        "*/*",
    )
)
# A manifest answer must be one of these (whatever redirect led to it): the listed types
# plus the schema 1 and artifact forms registries still serve.
MANIFEST_ANSWER_TYPES = ACCEPTABLE_MANIFEST_TYPES - {"application/json", "*/*"}
# Manifests larger than this are refused: distribution uses the same 4 MiB ceiling,
# and manifests are the only bodies cachesvc holds whole in memory.
MAX_MANIFEST_BYTES = 4 * 1024 * 1024


# Accept values repeat (every pull asks the same few): memoized, bounded (clients choose them).
_PARSE_MEMO = 4096


def normalize_accept(values: list[str]) -> tuple[str, ...]:
    """The set of manifest media types a client accepts, in a stable order.

    Upstream answers differ by Accept, so the tag cache keys on this. Parameters
    (``;q=0.5``) are dropped and only known manifest types and ``*/*`` are kept:
    anything else would let a client mint endless cache keys (and upstream GETs).
    """
    return _normalize_accept(",".join(values))


@functools.lru_cache(maxsize=_PARSE_MEMO)
def _normalize_accept(value: str) -> tuple[str, ...]:
    types: set[str] = set()
    for part in value.split(","):
        media = part.split(";", 1)[0].strip().lower()
        if media in ACCEPTABLE_MANIFEST_TYPES:
            types.add(media)
    if not types:
        # A client that states no preference gets whatever the image is: ask upstream
        # for every manifest type rather than let it down-convert or refuse.
        return tuple(sorted(MANIFEST_MEDIA_TYPES))
    return tuple(sorted(types))[:32]


def not_a_manifest(media_type: str, body: bytes) -> str | None:
    """Why an upstream answer for a manifest is not one (None: it is).

    A manifest media type and a JSON object with ``schemaVersion``: a registry that
    redirects a tag to some other URL (cachesvc's own ``/metrics``, a login page) must not
    have that answer cached and served as the tag.
    """
    if media_type.lower() not in MANIFEST_ANSWER_TYPES:
        return f"its media type is {media_type[:80]!r}, not a manifest type"
    head = body.lstrip()[:1]
    if head != b"{" or b'"schemaVersion"' not in body:
        return "it is not a JSON document with schemaVersion"
    return None
