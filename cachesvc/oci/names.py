"""Repository names, tags and registry hosts: the distribution-spec grammar.

A value that passes these checks is safe to place in an upstream URL.
"""

from __future__ import annotations

import re

from cachesvc.errors import NameInvalid, TagInvalid

# distribution-spec name grammar, per path component.
_COMPONENT = r"[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*"
_NAME_RE = re.compile(rf"{_COMPONENT}(?:/{_COMPONENT})*")
_TAG_RE = re.compile(r"[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}")
_REGISTRY_RE = re.compile(
    r"(?:[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?)(?:\.[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?)*"
    r"(?::[0-9]{1,5})?|\[[0-9a-fA-F:.]+\](?::[0-9]{1,5})?"
)
MAX_NAME_LENGTH = 255


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
