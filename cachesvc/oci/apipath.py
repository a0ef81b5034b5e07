"""The /v2 path grammar: ``/v2/<name>/<kind>/<reference>``."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Literal

from cachesvc.errors import Unsupported

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


# Paths repeat (every pull of an image asks the same few): memoized, bounded because
# clients choose them. Errors are never cached.
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
