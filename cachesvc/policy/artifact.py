"""Reading the OCI manifests and indexes that carry signatures, without trusting them.

Everything here parses bytes that came from a registry: sizes, counts and digests are checked
before anything is fetched or believed, and every problem is an ``ArtifactError`` (which the
verifiers turn into a "bad signature" refusal) rather than a ``KeyError`` or ``TypeError``.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from cachesvc.errors import CachesvcError

__all__ = [
    "MAX_ARTIFACT_BYTES",
    "MAX_BLOB_BYTES",
    "MAX_DESCRIPTORS",
    "ArtifactDescriptor",
    "ArtifactError",
    "check_blob",
    "digest_of",
    "is_digest",
    "parse_descriptors",
    "parse_json_object",
]

MAX_ARTIFACT_BYTES = 4 * 1024 * 1024
"""Largest signature manifest or referrers index considered (the OCI manifest size limit)."""
MAX_BLOB_BYTES = 1024 * 1024
"""Largest signature layer fetched: a simple-signing payload is ~250 bytes, a bundle with a
certificate chain and transparency-log entries a few KiB."""
MAX_DESCRIPTORS = 64
"""Most layers (signatures) or referrers one artifact may list; cosign adds one per signing."""

_DIGEST = re.compile(r"^(sha256:[0-9a-f]{64}|sha512:[0-9a-f]{128})$")


class ArtifactError(CachesvcError):
    """A signature artifact that is malformed, too large, or inconsistent with its digests."""


@dataclass(frozen=True, slots=True)
class ArtifactDescriptor:
    """An OCI descriptor as found in a manifest's ``layers`` or an index's ``manifests``."""

    media_type: str
    digest: str
    size: int
    annotations: Mapping[str, str] = field(default_factory=dict)
    artifact_type: str = ""


def is_digest(value: object) -> bool:
    """Whether ``value`` is a ``sha256:``/``sha512:`` digest in canonical lowercase form."""
    return isinstance(value, str) and _DIGEST.match(value) is not None


def digest_of(data: bytes, algorithm: str = "sha256") -> str:
    """``<algorithm>:<hex>`` of ``data``."""
    return f"{algorithm}:{hashlib.new(algorithm, data).hexdigest()}"


def check_blob(descriptor: ArtifactDescriptor, data: bytes) -> None:
    """Raise ``ArtifactError`` unless ``data`` has exactly the descriptor's size and digest."""
    if len(data) != descriptor.size:
        raise ArtifactError(
            f"{descriptor.digest}: {len(data)} bytes, descriptor says {descriptor.size}"
        )
    algorithm = descriptor.digest.partition(":")[0]
    if digest_of(data, algorithm) != descriptor.digest:
        raise ArtifactError(f"{descriptor.digest}: the bytes have another digest")


def parse_json_object(data: bytes, what: str, limit: int = MAX_ARTIFACT_BYTES) -> dict[str, Any]:
    """``data`` as a JSON object, or ``ArtifactError`` naming ``what`` it should have been."""
    if len(data) > limit:
        raise ArtifactError(f"{what}: larger than {limit} bytes")
    try:
        parsed = json.loads(data)
    except (ValueError, RecursionError) as exc:
        raise ArtifactError(f"{what}: not JSON ({exc})") from exc
    if not isinstance(parsed, dict):
        raise ArtifactError(f"{what}: not a JSON object")
    return parsed


def _descriptor(raw: object, where: str) -> ArtifactDescriptor:
    if not isinstance(raw, dict):
        raise ArtifactError(f"{where}: not an object")
    media_type, digest, size = raw.get("mediaType"), raw.get("digest"), raw.get("size")
    if not isinstance(media_type, str):
        raise ArtifactError(f"{where}: no mediaType")
    if not is_digest(digest):
        raise ArtifactError(f"{where}: digest {digest!r} is not a digest")
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise ArtifactError(f"{where}: size {size!r} is not a byte count")
    annotations = raw.get("annotations") or {}
    if not isinstance(annotations, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in annotations.items()
    ):
        raise ArtifactError(f"{where}: annotations are not a string map")
    artifact_type = raw.get("artifactType") or ""
    if not isinstance(artifact_type, str):
        raise ArtifactError(f"{where}: artifactType is not a string")
    assert isinstance(digest, str)  # is_digest checked it; for the type checker
    return ArtifactDescriptor(media_type, digest, size, dict(annotations), artifact_type)


def parse_descriptors(document: Mapping[str, Any], key: str, what: str) -> list[ArtifactDescriptor]:
    """The descriptors in ``document[key]`` (``layers`` or ``manifests``), bounded in number."""
    raw = document.get(key)
    if not isinstance(raw, list):
        raise ArtifactError(f"{what}: no {key} list")
    if len(raw) > MAX_DESCRIPTORS:
        raise ArtifactError(f"{what}: {len(raw)} {key}, more than {MAX_DESCRIPTORS}")
    return [_descriptor(item, f"{what} {key}[{i}]") for i, item in enumerate(raw)]
