"""Which configured registry, and which repository there, a request is for.

1. ``?ns=<registry>`` (what containerd sends to a mirror) picks the registry;
2. else a first path component that names a configured registry
   (``/v2/ghcr.io/org/app/...``), so skopeo, crane and curl can reach any of them;
3. else ``default_registry``.

A registry that is not configured is never contacted: cachesvc mirrors named
registries and is not an open proxy.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping

from cachesvc.config import RegistryConfig
from cachesvc.errors import NameInvalid, NameUnknown
from cachesvc.oci import is_registry_host, validate_name
from cachesvc.oci.reference import Target

__all__ = ["ROUTES_REMEMBERED", "Router", "Target"]

# Routed names remembered (client-chosen, so bounded: least recently used go first).
ROUTES_REMEMBERED = 4096


class Router:
    """Maps (ns, path name) to a ``Target``."""

    def __init__(self, registries: Mapping[str, RegistryConfig], default: str | None) -> None:
        self._registries = registries
        self._default = default
        # Answers for names seen before: every request of a pull routes the same name
        # (errors are not remembered).
        self._remembered = functools.lru_cache(maxsize=ROUTES_REMEMBERED)(self._route)

    def route(self, ns: str | None, name: str) -> Target:
        """Resolve a request's registry and repository; validates the repository name."""
        return self._remembered(ns, name)

    def _route(self, ns: str | None, name: str) -> Target:
        if ns is not None:
            if not is_registry_host(ns):
                raise NameInvalid(f"invalid ns parameter {ns[:80]!r}: expected a registry host")
            registry = self._known(ns.lower())
            repository = name
        else:
            first, sep, rest = name.partition("/")
            if sep and first in self._registries:
                registry, repository = first, rest
            elif self._default is not None:
                registry, repository = self._default, name
            else:
                raise NameUnknown(
                    "no registry named: send ?ns=<registry>, prefix the name with a "
                    "configured registry, or set default_registry"
                )
        validate_name(repository)
        if registry == "docker.io" and "/" not in repository:
            repository = f"library/{repository}"
        return Target(registry, repository, ns is not None, name)

    def _known(self, registry: str) -> str:
        if registry not in self._registries:
            raise NameUnknown(
                f"registry {registry!r} is not mirrored by this cachesvc; add it under "
                "'registries:' in the configuration"
            )
        return registry
