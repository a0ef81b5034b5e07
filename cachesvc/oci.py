"""OCI words: repository names, tags, digests, media types and the /v2 path grammar.

Everything a client sends is parsed here before it is used anywhere else. A value
that passes these checks is safe to place in a file path (digests) or an upstream
URL (names, tags); a value that does not is a 4xx ``RegistryError``.
"""

from __future__ import annotations

import functools
import hashlib
import re
from dataclasses import dataclass
from typing import Literal

from cachesvc.errors import DigestInvalid, NameInvalid, TagInvalid, Unsupported

# distribution-spec name grammar, per path component.
_COMPONENT = r"[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*"
_NAME_RE = re.compile(rf"{_COMPONENT}(?:/{_COMPONENT})*")
_TAG_RE = re.compile(r"[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}")
_REGISTRY_RE = re.compile(
    r"(?:[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?)(?:\.[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?)*"
    r"(?::[0-9]{1,5})?|\[[0-9a-fA-F:.]+\](?::[0-9]{1,5})?"
)
_HEX = {"sha256": 64, "sha512": 128}
_LOWER_HEX_RE = re.compile(r"[0-9a-f]+")
MAX_NAME_LENGTH = 255

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
# Manifests larger than this are refused: distribution uses the same 4 MiB ceiling,
# and manifests are the only bodies cachesvc holds whole in memory.
MAX_MANIFEST_BYTES = 4 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class Digest:
    """A parsed, validated content digest such as ``sha256:<64 hex>``."""

    algorithm: str
    hex: str

    @classmethod
    def parse(cls, text: str) -> Digest:
        """Parse ``algorithm:encoded``; anything else is ``DIGEST_INVALID``."""
        algorithm, sep, encoded = text.partition(":")
        if not sep or not algorithm or not encoded:
            raise DigestInvalid(f"invalid digest {text[:80]!r}: expected algorithm:hex")
        if algorithm not in _HEX:
            raise DigestInvalid(
                f"unsupported digest algorithm {algorithm[:20]!r}: use sha256 or sha512"
            )
        if len(encoded) != _HEX[algorithm] or not _LOWER_HEX_RE.fullmatch(encoded):
            raise DigestInvalid(
                f"invalid {algorithm} digest: expected {_HEX[algorithm]} lowercase hex characters"
            )
        return cls(algorithm, encoded)

    @classmethod
    def of(cls, data: bytes, algorithm: str = "sha256") -> Digest:
        """The digest of ``data``."""
        return cls(algorithm, hashlib.new(algorithm, data).hexdigest())

    def hasher(self) -> hashlib._Hash:
        """A fresh hash object of this digest's algorithm."""
        return hashlib.new(self.algorithm)

    def __str__(self) -> str:
        return f"{self.algorithm}:{self.hex}"


def is_digest(reference: str) -> bool:
    """True when a manifest reference is meant as a digest (contains ``:``)."""
    return ":" in reference


def validate_name(name: str) -> str:
    """Check a repository name against the distribution-spec grammar."""
    if len(name) > MAX_NAME_LENGTH:
        raise NameInvalid(f"repository name is longer than {MAX_NAME_LENGTH} characters")
    if not _NAME_RE.fullmatch(name):
        raise NameInvalid(
            f"invalid repository name {name[:80]!r}: lowercase letters, digits and "
            "separators (. _ __ -) in /-separated components"
        )
    return name


def validate_tag(tag: str) -> str:
    """Check a tag against the distribution-spec grammar."""
    if not _TAG_RE.fullmatch(tag):
        raise TagInvalid(
            f"invalid tag {tag[:80]!r}: up to 128 of [A-Za-z0-9_.-], not starting with . or -"
        )
    return tag


def is_registry_host(text: str) -> bool:
    """True when ``text`` looks like a registry host[:port] (``ns=`` values, path prefixes)."""
    return bool(_REGISTRY_RE.fullmatch(text)) and len(text) <= 255


Kind = Literal["manifests", "blobs", "tags", "referrers"]


@dataclass(frozen=True, slots=True)
class ApiPath:
    """A parsed ``/v2/<name>/<kind>/<reference>`` path (name not yet split by registry)."""

    name: str
    kind: Kind
    reference: str


_SUFFIXES: tuple[tuple[str, Kind], ...] = (
    ("/manifests/", "manifests"),
    ("/blobs/", "blobs"),
    ("/referrers/", "referrers"),
)


# Paths and Accept values repeat (every pull of an image asks the same few), so their
# parses are memoized; bounded because clients choose them. Errors are never cached.
_PARSE_MEMO = 4096


@functools.lru_cache(maxsize=_PARSE_MEMO)
def parse_api_path(tail: str) -> ApiPath:
    """Split the part of a path after ``/v2/`` on its LAST kind marker.

    Names contain ``/``, so ``a/blobs/b/manifests/x`` is the repository
    ``a/blobs/b``. The name is validated by the caller once the registry is known.
    """
    if tail.endswith("/tags/list"):
        return ApiPath(tail[: -len("/tags/list")], "tags", "")
    best: tuple[int, str, Kind] | None = None
    for marker, kind in _SUFFIXES:
        at = tail.rfind(marker)
        if at > 0 and (best is None or at > best[0]):
            best = (at, marker, kind)
    if best is None:
        raise Unsupported(
            "unsupported path: expected /v2/<name>/manifests/<reference>, "
            "/v2/<name>/blobs/<digest>, /v2/<name>/tags/list or /v2/<name>/referrers/<digest>"
        )
    at, marker, kind = best
    reference = tail[at + len(marker) :]
    if not reference or "/" in reference:
        raise Unsupported(f"unsupported path: bad {kind} reference")
    return ApiPath(tail[:at], kind, reference)


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
