"""An upstream blob response as a fill consumes it."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass


@dataclass(slots=True)
class BlobBody:
    """An upstream blob response: its size (None when chunked) and its bytes as they arrive."""

    size: int | None
    chunks: AsyncIterator[bytes]
    endpoint: str | None = None  # the upstream endpoint that answered (for the access log)
