"""Repository allow patterns (``registries.<name>.allow``): never an open proxy.

A pattern is a repository path whose components are literal names or a wildcard standing for
whole components::

    dev-team/app     exactly that repository
    dev-team/*       one level below dev-team:   dev-team/app, not dev-team/app/x nor dev-team
    platform/**      any depth below platform:   platform/a, platform/a/b/c, not platform
    */base           any one-level namespace's base

``**`` may only be the last component; a wildcard inside a component (``dev-*``) is refused,
since whole components are what namespaces delegate. Literal components follow the OCI
repository grammar (lowercase), so a pattern that could never match is a config error.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from cachesvc.errors import ConfigError

__all__ = ["RepositoryAllowList", "compile_allow"]

_COMPONENT = re.compile(r"^[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*$")
_ONE, _ANY = "*", "**"


@dataclass(frozen=True, slots=True)
class _Pattern:
    components: tuple[str, ...]

    def matches(self, parts: Sequence[str]) -> bool:
        if self.components[-1] == _ANY:
            head = self.components[:-1]
            return len(parts) > len(head) and _match_each(head, parts[: len(head)])
        return len(parts) == len(self.components) and _match_each(self.components, parts)


def _match_each(patterns: Sequence[str], parts: Sequence[str]) -> bool:
    return all(p in (_ONE, part) for p, part in zip(patterns, parts, strict=True))


def _compile_one(pattern: object, key: str) -> _Pattern:
    if not isinstance(pattern, str) or not pattern:
        raise ConfigError(key, "a repository pattern must be a non-empty string")
    components = tuple(pattern.split("/"))
    for i, component in enumerate(components):
        if component == _ANY and i != len(components) - 1:
            raise ConfigError(key, f"{pattern!r}: '**' may only be the last component")
        if component in (_ONE, _ANY):
            continue
        if "*" in component:
            raise ConfigError(
                key, f"{pattern!r}: a wildcard stands for whole components ('*' or '**')"
            )
        if not _COMPONENT.match(component):
            raise ConfigError(
                key,
                f"{pattern!r}: component {component!r} is not a repository name component "
                "(lowercase letters, digits, separators '.', '_', '__', '-')",
            )
    return _Pattern(components)


@dataclass(frozen=True, slots=True)
class RepositoryAllowList:
    """Compiled patterns; ``patterns`` keeps the text for the 403 message."""

    patterns: tuple[str, ...]
    _compiled: tuple[_Pattern, ...]

    def allows(self, repository: str) -> bool:
        """Whether ``repository`` (e.g. ``dev-team/app``) matches any pattern."""
        parts = repository.split("/")
        return any(p.matches(parts) for p in self._compiled)

    def describe(self) -> str:
        """The list as the refusal names it: ``allow: [dev-team/*, platform/**]``."""
        return "allow: [" + ", ".join(self.patterns) + "]"


def compile_allow(patterns: Sequence[object], key: str) -> RepositoryAllowList:
    """Check and compile ``patterns`` (config key ``key``); ``ConfigError`` names the index."""
    if isinstance(patterns, str):
        raise ConfigError(key, "must be a list of repository patterns, not one string")
    compiled = tuple(_compile_one(p, f"{key}[{i}]") for i, p in enumerate(patterns))
    return RepositoryAllowList(tuple(str(p) for p in patterns), compiled)
