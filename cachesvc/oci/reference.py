"""Image references as operators write them: ``docker.io/library/nginx:1.27``,
``ghcr.io/org/app@sha256:...``, ``nginx`` (the default registry, tag ``latest``).

A reference is split into registry, repository and tag or digest, then routed
exactly as containerd's request ``/v2/<repository>/manifests/<ref>?ns=<registry>``
would be, so prewarm, pins and purge name images the way pulls do.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from cachesvc.errors import NameInvalid
from cachesvc.oci.digest import Digest
from cachesvc.oci.names import is_registry_host, validate_tag


@dataclass(frozen=True, slots=True)
class Target:
    """A repository at a configured registry, as upstream names it."""

    registry: str
    repository: str
    via_ns: bool  # the client named the registry with ?ns= (affects Link rewriting)
    client_name: str  # the name as the client wrote it in the path


class Routes(Protocol):
    """What routes a (registry, name) pair to a ``Target`` (``cachesvc.mirror.routing``)."""

    def route(self, ns: str | None, name: str) -> Target:
        """The configured registry and repository for ``name``, or a ``RegistryError``."""
        ...


@dataclass(frozen=True, slots=True)
class ImageReference:
    """A parsed, routed reference: where it lives and which manifest it names."""

    target: Target
    tag: str | None
    digest: Digest | None

    @property
    def reference(self) -> str:
        """What to ask the manifests endpoint for: the digest when given, else the tag."""
        return str(self.digest) if self.digest is not None else (self.tag or "latest")

    def __str__(self) -> str:
        name = f"{self.target.registry}/{self.target.repository}"
        if self.tag is not None:
            name += f":{self.tag}"
        if self.digest is not None:
            name += f"@{self.digest}"
        return name


def parse_reference(text: str, router: Routes, default_registry: str | None) -> ImageReference:
    """Parse and route ``text``; ``NameInvalid``/``NameUnknown`` when it cannot be."""
    text = text.strip()
    if not text or len(text) > 512:
        raise NameInvalid("empty or over-long image reference")
    rest, at, digest_text = text.partition("@")
    digest = Digest.parse(digest_text) if at else None
    first, slash, remainder = rest.partition("/")
    if slash and (
        is_registry_host(first) and ("." in first or ":" in first or first == "localhost")
    ):
        registry: str | None = first
        name = remainder
    else:
        registry, name = default_registry, rest
    tag: str | None = None
    last_slash = name.rfind("/")
    colon = name.rfind(":")
    if colon > last_slash:
        name, tag = name[:colon], validate_tag(name[colon + 1 :])
    if tag is None and digest is None:
        tag = "latest"
    if registry is None:
        raise NameInvalid(f"{text[:80]!r} names no registry and no default_registry is set")
    target = router.route(registry, name)
    return ImageReference(target, tag, digest)
