"""Reading an upstream's answer to a manifest request, before anything is kept.

An answer for a manifest must be a manifest (``oci.not_a_manifest``), whatever redirect led
to it, and its bytes must hash to the digest upstream declares: ``verified_manifest`` says
so or raises, naming the registry and tag. Its media type is upstream's Content-Type, else
the body's own ``mediaType``; a 404's reason is upstream's OCI error message, cleaned.
"""

from __future__ import annotations

import json

from cachesvc.errors import DigestInvalid, DigestMismatch, ManifestInvalid, UpstreamError
from cachesvc.mirror.routing import Target
from cachesvc.oci import MEDIA_OCI_MANIFEST, Digest, not_a_manifest
from cachesvc.upstream.client import Answer

__all__ = ["header_digest", "manifest_media_type", "upstream_reason", "verified_manifest"]


def _media_type(answer: Answer) -> str:
    """The manifest's media type: upstream's Content-Type, else the body's mediaType."""
    content_type = answer.headers.get("Content-Type", "").split(";", 1)[0].strip()
    if content_type and content_type not in (
        "application/json",
        "text/plain",
        "application/octet-stream",
    ):
        return content_type[:200]
    try:
        declared = json.loads(answer.body).get("mediaType")
    except (ValueError, AttributeError):
        declared = None
    if isinstance(declared, str) and declared:
        return declared[:200]
    return content_type or MEDIA_OCI_MANIFEST


def manifest_media_type(registry: str, reference: str, answer: Answer) -> str:
    """The answer's media type, or ``ManifestInvalid`` if the answer is not a manifest."""
    media_type = _media_type(answer)
    problem = not_a_manifest(media_type, answer.body)
    if problem is not None:
        raise ManifestInvalid(
            f"{registry} answered the manifest request for {reference} with something that is "
            f"not a manifest ({problem}); nothing was kept"
        )
    return media_type


def upstream_reason(answer: Answer) -> str:
    """The message of an OCI error body (``errors[0].message``), printable, short; or ""."""
    try:
        message = json.loads(answer.body)["errors"][0]["message"]
    except (ValueError, LookupError, TypeError):
        return ""
    if not isinstance(message, str):
        return ""
    return "".join(c for c in message if c.isprintable())[:200]


def header_digest(answer: Answer) -> Digest | None:
    """The digest upstream declares (``Docker-Content-Digest``); None if absent or bad."""
    value = answer.headers.get("Docker-Content-Digest")
    if not value:
        return None
    try:
        return Digest.parse(value.strip())
    except DigestInvalid:
        return None


def verified_manifest(target: Target, tag: str, answer: Answer) -> tuple[Digest, str]:
    """The digest and media type of a manifest GET's answer (not a 404), once its bytes
    are known to be a non-empty manifest matching any digest upstream declared."""
    if answer.status != 200:
        raise UpstreamError(f"{target.registry} answered {answer.status} for a manifest")
    declared = header_digest(answer)
    algorithm = declared.algorithm if declared is not None else "sha256"
    digest = Digest.of(answer.body, algorithm)
    if declared is not None and declared != digest:
        raise DigestMismatch(
            f"{target.registry} sent {target.repository}:{tag} with Docker-Content-Digest "
            f"{declared} but the bytes hash to {digest}; nothing was kept"
        )
    if not answer.body:
        raise ManifestInvalid(f"{target.registry} sent an empty manifest for {tag}")
    return digest, manifest_media_type(target.registry, tag, answer)
