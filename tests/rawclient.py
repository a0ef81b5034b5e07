"""A raw TCP connection to a listener, for tests that write request bytes themselves."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager


@asynccontextmanager
async def connection(
    address: tuple[str, int],
) -> AsyncIterator[tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
    """``(reader, writer)`` to ``address``, closed (and waited for) afterwards."""
    reader, writer = await asyncio.open_connection(*address)
    try:
        yield reader, writer
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


async def read_response(reader: asyncio.StreamReader, *, head: bool = False) -> tuple[bytes, bytes]:
    """One response: (status line and headers without Date, body)."""
    async with asyncio.timeout(10):
        block = await reader.readuntil(b"\r\n\r\n")
        lines = block.split(b"\r\n")
        length = next(
            int(v) for k, _, v in (x.partition(b": ") for x in lines) if k == b"Content-Length"
        )
        body = b"" if head else await reader.readexactly(length)
    kept = b"\r\n".join(line for line in lines if not line.startswith(b"Date: "))
    return kept, body
