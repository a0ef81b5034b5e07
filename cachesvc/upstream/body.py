"""Reading upstream response bodies: small answers whole (bounded), blobs as they arrive.

Transport failures while reading are translated here into ``UpstreamUnreachable`` /
``UpstreamTimeout``, so nothing above ``upstream`` sees an ``aiohttp`` exception.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass

import aiohttp

from cachesvc.errors import ManifestInvalid, UpstreamTimeout, UpstreamUnreachable


@dataclass(slots=True)
class BlobBody:
    """An upstream blob response: its size (None when chunked) and its bytes as they arrive."""

    size: int | None
    chunks: AsyncIterator[bytes]
    endpoint: str | None = None  # the upstream endpoint that answered (for the access log)
    counted: bool = False  # the source counts its own received bytes (a chain of sources)
    guards_stall: bool = False  # the source times out stalls itself (a chain: resumes instead)


async def read_whole(
    resp: aiohttp.ClientResponse,
    limit: int,
    registry: str,
    path: str,
    *,
    deadline: float | None = None,
) -> bytes:
    """The body of ``resp``, refused (``ManifestInvalid``) as soon as it exceeds ``limit``,
    and ``UpstreamTimeout`` if it is not complete by ``deadline`` (loop time).

    The declared Content-Length is checked first and the bytes are counted as they come,
    so a lying or endless upstream never costs more than ``limit`` bytes of memory, and
    a trickling one no more than the deadline. A body refused half-read closes its
    connection (it is never handed to another request).
    """
    too_big = f"{registry} sent a body over {limit} bytes for {path}"
    if resp.content_length is not None and resp.content_length > limit:
        resp.close()
        raise ManifestInvalid(too_big)
    parts: list[bytes] = []
    total = 0
    try:
        async with asyncio.timeout_at(deadline):
            async for chunk in resp.content.iter_any():
                total += len(chunk)
                if total > limit:
                    resp.close()
                    raise ManifestInvalid(too_big)
                parts.append(chunk)
    except aiohttp.ClientError as exc:
        raise UpstreamUnreachable(f"{registry}: body cut: {exc}") from None
    except TimeoutError:
        resp.close()
        raise UpstreamTimeout(
            f"{registry} did not send the whole body of {path} within timeouts.first_byte"
        ) from None
    return b"".join(parts)


async def blob_chunks(resp: aiohttp.ClientResponse, registry: str) -> AsyncIterator[bytes]:
    """The body of a blob response, chunk by chunk as received."""
    # iter_chunks hands over the buffers as received (no re-joining or slicing:
    # profiling showed those copies bounding cold fills on the event loop).
    try:
        async for chunk, _ in resp.content.iter_chunks():
            yield chunk
    except aiohttp.ClientError as exc:
        raise UpstreamUnreachable(f"{registry}: blob transfer cut: {exc}") from None
    except TimeoutError:
        raise UpstreamTimeout(f"{registry}: blob transfer stalled") from None
