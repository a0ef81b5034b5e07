"""The typed image model: descriptors, platforms, image manifests and indexes.

``parse_manifest(media_type, body)`` is the one place cachesvc reads a manifest's JSON (prewarm
walks an image with it, the inventory lists and purges with it). It validates what
cachesvc relies on and nothing more: every descriptor has a valid ``digest`` and a
non-negative whole ``size``; ``mediaType``, ``artifactType``, ``platform`` and
``annotations`` (a string map), when present, have the right types; a document with both
``layers`` and ``manifests`` is neither kind. The policy reads cosign's signature
manifests and referrers indexes with it too (``cachesvc.policy.payload``), so there is
one descriptor parser, not one per reader. Anything else is ``ManifestInvalid`` with a message
naming the field (``layers[3].size: expected a whole number >= 0``), never a
``KeyError`` or a ``TypeError``. Bodies are bounded (``MAX_MANIFEST_BYTES``), and so
are the lists in them (``MAX_DESCRIPTORS``), so hostile input costs bounded memory.

Which kind a body is comes from the media type it was served with (index or image
manifest types), else from the body's own ``mediaType``, else from its shape (an
object with ``manifests`` is an index), as registries that answer ``application/json``
need.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field

from cachesvc.errors import DigestInvalid, ManifestInvalid
from cachesvc.oci.digest import Digest
from cachesvc.oci.media import (
    INDEX_MEDIA_TYPES,
    MAX_MANIFEST_BYTES,
    MEDIA_DOCKER_MANIFEST,
    MEDIA_OCI_MANIFEST,
)

# Layers of an image or entries of an index; Docker refuses images over 127 layers, and
# the largest real indexes (every platform plus attestations) hold a few dozen entries.
MAX_DESCRIPTORS = 4096
# os, architecture and variant are short words (linux, arm64, v8, unknown): no '/', so
# the text form os/arch[/variant] reads back unambiguously.
_WORD_RE = re.compile(r"[A-Za-z0-9._-]{1,64}")
_MAX_MEDIA_TYPE = 255  # RFC 6838: 127 characters each side of the '/'


@dataclass(frozen=True, slots=True)
class Platform:
    """``os/architecture[/variant]`` of an index entry or an image config."""

    os: str
    architecture: str
    variant: str | None = None

    def __str__(self) -> str:
        base = f"{self.os}/{self.architecture}"
        return f"{base}/{self.variant}" if self.variant else base


@dataclass(frozen=True, slots=True)
class Descriptor:
    """What a manifest says about one blob or child manifest."""

    digest: Digest
    size: int
    media_type: str = ""  # "" when the descriptor names none
    platform: Platform | None = None  # index entries only
    # Not part of the identity (the digest is): excluded from == and hash.
    annotations: Mapping[str, str] = field(default_factory=dict, compare=False)
    artifact_type: str = ""  # referrers index entries: what the referrer is

    def mismatch(self, data: bytes) -> str | None:
        """Why ``data`` is not the content this descriptor names (None: it is).

        Size first (cheap), then the digest: bytes fetched by a descriptor are believed
        only after both match."""
        if len(data) != self.size:
            return f"{self.digest}: {len(data)} bytes, the descriptor says {self.size}"
        if Digest.of(data, self.digest.algorithm) != self.digest:
            return f"{self.digest}: the bytes have another digest"
        return None


@dataclass(frozen=True, slots=True)
class Manifest:
    """An image manifest: one config and its layers."""

    media_type: str
    config: Descriptor
    layers: tuple[Descriptor, ...]
    artifact_type: str = ""  # an artifact manifest's kind (a sigstore bundle, an SBOM)

    @property
    def blobs(self) -> tuple[Descriptor, ...]:
        """The config, then the layers: every blob the image needs."""
        return (self.config, *self.layers)


@dataclass(frozen=True, slots=True)
class Index:
    """An image index (or Docker manifest list): one manifest per platform."""

    media_type: str
    manifests: tuple[Descriptor, ...]

    def platforms(self) -> list[str]:
        """The text form of each entry's platform, ``unknown`` where it names none."""
        return [str(m.platform) if m.platform else "unknown" for m in self.manifests]


def parse_manifest(media_type: str, body: bytes) -> Manifest | Index:
    """Validate ``body`` (served as ``media_type``) into a ``Manifest`` or an ``Index``."""
    document = _document(body)
    declared = _optional_text(document, "mediaType", "")
    kind = media_type if media_type in _KNOWN else declared
    if "layers" in document and "manifests" in document:
        raise ManifestInvalid("has both layers and manifests: neither a manifest nor an index")
    if kind in INDEX_MEDIA_TYPES or (kind not in _MANIFESTS and "manifests" in document):
        entries = _list(document, "manifests", required=True)
        return Index(
            media_type or declared,
            tuple(_descriptor(e, f"manifests[{i}]", platform=True) for i, e in enumerate(entries)),
        )
    layers = _list(document, "layers", required=False)
    return Manifest(
        media_type or declared,
        _descriptor(document.get("config"), "config", platform=False),
        tuple(_descriptor(d, f"layers[{i}]", platform=False) for i, d in enumerate(layers)),
        _optional_text(document, "artifactType", ""),
    )


def config_platform(body: bytes) -> Platform | None:
    """The platform an image config declares (its top-level os/architecture/variant);
    None when it declares none."""
    return _platform(_document(body), "config", of_config=True)


_MANIFESTS = (MEDIA_OCI_MANIFEST, MEDIA_DOCKER_MANIFEST)
_KNOWN = (*INDEX_MEDIA_TYPES, *_MANIFESTS)


def _document(body: bytes) -> Mapping[str, object]:
    if len(body) > MAX_MANIFEST_BYTES:
        raise ManifestInvalid(f"manifest over {MAX_MANIFEST_BYTES} bytes")
    try:
        value = json.loads(body)
    except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError
        raise ManifestInvalid("manifest is not valid JSON") from None
    if not isinstance(value, dict):
        raise ManifestInvalid(f"manifest is a JSON {type(value).__name__}, not an object")
    return value


def _list(document: Mapping[str, object], key: str, *, required: bool) -> list[object]:
    value = document.get(key)
    if value is None and not required:
        return []
    if not isinstance(value, list):
        raise ManifestInvalid(f"{key}: expected a list")
    if len(value) > MAX_DESCRIPTORS:
        raise ManifestInvalid(f"{key}: more than {MAX_DESCRIPTORS} entries")
    return value


def _descriptor(value: object, where: str, *, platform: bool) -> Descriptor:
    if not isinstance(value, dict):
        raise ManifestInvalid(f"{where}: expected a descriptor object")
    digest = value.get("digest")
    if digest is None:
        raise ManifestInvalid(f"{where}: has no digest")
    if not isinstance(digest, str):
        raise ManifestInvalid(f"{where}.digest: expected a digest string")
    try:
        parsed = Digest.parse(digest)
    except DigestInvalid as exc:
        raise ManifestInvalid(f"{where}.digest: {exc.message}") from None
    size = value.get("size")
    if isinstance(size, bool) or not isinstance(size, int) or size < 0:
        raise ManifestInvalid(f"{where}.size: expected a whole number >= 0")
    return Descriptor(
        parsed,
        size,
        _optional_text(value, "mediaType", where),
        _platform(value.get("platform"), f"{where}.platform") if platform else None,
        _annotations(value.get("annotations"), f"{where}.annotations"),
        _optional_text(value, "artifactType", where),
    )


def _annotations(value: object, where: str) -> Mapping[str, str]:
    """A descriptor's ``annotations``: the image spec's string-to-string map."""
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in value.items()
    ):
        raise ManifestInvalid(f"{where}: expected a map of strings to strings")
    return value


def _optional_text(value: Mapping[str, object], key: str, where: str) -> str:
    text = value.get(key, "")
    if not isinstance(text, str) or len(text) > _MAX_MEDIA_TYPE:
        name = f"{where}.{key}" if where else key
        raise ManifestInvalid(f"{name}: expected a media type string")
    return text


def _platform(value: object, where: str, *, of_config: bool = False) -> Platform | None:
    """An index entry's ``platform`` (or, ``of_config``, an image config's top level)."""
    if value is None:
        return None
    if not isinstance(value, dict):
        raise ManifestInvalid(f"{where}: expected an object")
    if of_config and value.get("os") is None and value.get("architecture") is None:
        return None  # a config that declares no platform (artifacts, some old images)
    variant = value.get("variant")
    return Platform(
        _word(value.get("os"), f"{where}.os"),
        _word(value.get("architecture"), f"{where}.architecture"),
        None if variant is None or variant == "" else _word(variant, f"{where}.variant"),
    )


def _word(value: object, where: str) -> str:
    if isinstance(value, str) and _WORD_RE.fullmatch(value):
        return value
    raise ManifestInvalid(f"{where}: expected a word such as linux or arm64")
