"""Reading signature artifacts without trusting them.

The OCI parts (a ``.sig`` manifest, a bundle referrer, a referrers index, a signed image
index) are parsed by the project's one typed model, :mod:`cachesvc.oci.image`; what this
module adds is the policy's view of them: much smaller bounds (a signature is a few KiB, not
a 4 MiB manifest), and one error, ``ArtifactError``, which the verifiers turn into a "bad
signature" refusal rather than a 502 or a ``KeyError``. The signed payloads themselves
(simple-signing JSON, sigstore bundles, in-toto statements) are not OCI documents: they are
read here, bounded, by :func:`parse_json_object`.
"""

from __future__ import annotations

import json
from typing import Any

from cachesvc.errors import CachesvcError, ManifestInvalid
from cachesvc.oci.image import Descriptor, Index, Manifest, parse_manifest

__all__ = [
    "MAX_BLOB_BYTES",
    "MAX_SIGNATURES",
    "ArtifactError",
    "check_blob",
    "parse_json_object",
    "read_index",
    "read_manifest",
]

MAX_BLOB_BYTES = 1024 * 1024
"""Largest signature layer fetched: a simple-signing payload is ~250 bytes, a bundle with a
certificate chain and transparency-log entries a few KiB."""
MAX_SIGNATURES = 64
"""Most layers (signatures) one signature manifest may list, and most referrers or envelope
signatures considered; cosign adds one per signing."""


class ArtifactError(CachesvcError):
    """A signature artifact that is malformed, too large, or inconsistent with its digests."""


def _parsed(body: bytes, what: str) -> Manifest | Index:
    try:
        return parse_manifest("", body)
    except ManifestInvalid as exc:
        raise ArtifactError(f"{what}: {exc.message}") from None


def read_manifest(body: bytes, what: str) -> Manifest:
    """``body`` as an image manifest of at most ``MAX_SIGNATURES`` layers, else
    ``ArtifactError`` naming ``what`` it should have been."""
    parsed = _parsed(body, what)
    if not isinstance(parsed, Manifest):
        raise ArtifactError(f"{what}: an image index, not a manifest")
    if len(parsed.layers) > MAX_SIGNATURES:
        raise ArtifactError(f"{what}: {len(parsed.layers)} layers, more than {MAX_SIGNATURES}")
    return parsed


def read_index(body: bytes, what: str) -> Index:
    """``body`` as an image index (or Docker manifest list), else ``ArtifactError``."""
    parsed = _parsed(body, what)
    if not isinstance(parsed, Index):
        raise ArtifactError(f"{what}: an image manifest, not an index")
    return parsed


def check_blob(descriptor: Descriptor, data: bytes) -> None:
    """Raise ``ArtifactError`` unless ``data`` has exactly the descriptor's size and digest."""
    problem = descriptor.mismatch(data)
    if problem is not None:
        raise ArtifactError(problem)


def parse_json_object(data: bytes, what: str, limit: int = MAX_BLOB_BYTES) -> dict[str, Any]:
    """A signed payload as a JSON object, or ``ArtifactError`` naming ``what`` it should
    have been."""
    if len(data) > limit:
        raise ArtifactError(f"{what}: larger than {limit} bytes")
    try:
        parsed = json.loads(data)
    except (ValueError, RecursionError) as exc:
        raise ArtifactError(f"{what}: not JSON ({exc})") from exc
    if not isinstance(parsed, dict):
        raise ArtifactError(f"{what}: not a JSON object")
    return parsed
