"""Single byte ranges (RFC 9110 section 14): ``bytes=a-b``, ``bytes=a-``, ``bytes=-n``."""

from __future__ import annotations

import re

from cachesvc.errors import RangeNotSatisfiable

_RANGE_RE = re.compile(r"bytes=(\d{0,19})-(\d{0,19})")


def parse_range(header: str | None, size: int) -> tuple[int, int] | None:
    """The half-open byte span ``[start, end)`` a Range header asks for, or None for all.

    Anything that is not one satisfiable range (several ranges, garbage, a start past
    the end, ``bytes=-0``) raises ``RangeNotSatisfiable`` carrying the size for the
    416 answer's ``Content-Range: bytes */size``.
    """
    if header is None:
        return None
    match = _RANGE_RE.fullmatch(header.strip())
    if match is None or match.group(1) == match.group(2) == "":
        raise RangeNotSatisfiable(
            f"unsupported Range {header[:60]!r}: send one range as bytes=start-end", size=size
        )
    first, last = match.group(1), match.group(2)
    if first == "":
        suffix = int(last)
        if suffix == 0 or size == 0:
            raise RangeNotSatisfiable("empty suffix range", size=size)
        return max(0, size - suffix), size
    start = int(first)
    end = size if last == "" else min(int(last) + 1, size)
    if start >= size or (last != "" and int(last) < start):
        raise RangeNotSatisfiable(
            f"range {header[:60]!r} is outside the blob's {size} bytes", size=size
        )
    return start, end
