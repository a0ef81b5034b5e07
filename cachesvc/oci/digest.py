"""Content digests: the only values that name a file under the storage root."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from typing import Protocol

from cachesvc.errors import DigestInvalid

_HEX = {"sha256": 64, "sha512": 128}
_LOWER_HEX_RE = re.compile(r"[0-9a-f]+")


class Hasher(Protocol):
    """A running hash (what ``hashlib.new`` returns; hashlib documents its methods, not a
    public class for it)."""

    def update(self, data: bytes | bytearray | memoryview, /) -> None:
        """Add ``data`` to what is hashed."""

    def hexdigest(self) -> str:
        """The digest of what was added so far, lower-case hex."""
        ...


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

    def hasher(self) -> Hasher:
        """A fresh hash object of this digest's algorithm."""
        return hashlib.new(self.algorithm)

    def __str__(self) -> str:
        return f"{self.algorithm}:{self.hex}"


def is_digest(reference: str) -> bool:
    """True when a manifest reference is meant as a digest (contains ``:``)."""
    return ":" in reference
