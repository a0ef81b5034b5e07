"""Why cachesvc does not use aiofiles: ``python -m benchmarks.fileio``.

Measures the two places aiofiles could serve: a small read on the hit path (a stored
manifest) and a bulk write (a fill), against what cachesvc does instead (a direct read;
one worker-thread hop per batch that ``writev``s it).
"""

from __future__ import annotations

import asyncio
import os
import tempfile
import time
from pathlib import Path

import aiofiles

SMALL = 600  # bytes: a typical manifest
READS = 2000
CHUNK = 1024 * 1024
CHUNKS = 256  # 256 MiB written


async def _measure(directory: Path) -> dict[str, float]:
    loop = asyncio.get_running_loop()
    small = directory / "manifest"
    small.write_bytes(b"x" * SMALL)
    started = time.perf_counter()
    for _ in range(READS):
        async with aiofiles.open(small, "rb") as f:
            await f.read()
    aiofiles_read = (time.perf_counter() - started) / READS
    started = time.perf_counter()
    for _ in range(READS):
        with open(small, "rb") as g:  # noqa: ASYNC230 - the blocking read is what is measured
            g.read()
    direct_read = (time.perf_counter() - started) / READS

    chunk = os.urandom(CHUNK)
    started = time.perf_counter()
    async with aiofiles.open(directory / "a", "wb") as f:
        for _ in range(CHUNKS):
            await f.write(chunk)
    aiofiles_write = time.perf_counter() - started
    started = time.perf_counter()
    fd = os.open(directory / "b", os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    try:
        for _ in range(CHUNKS // 4):
            await loop.run_in_executor(None, os.writev, fd, [chunk] * 4)
    finally:
        os.close(fd)
    batched_write = time.perf_counter() - started
    return {
        "aiofiles_read_us": aiofiles_read * 1e6,
        "direct_read_us": direct_read * 1e6,
        "aiofiles_write_ms": aiofiles_write * 1e3,
        "batched_writev_ms": batched_write * 1e3,
    }


def main() -> None:
    """Print the medians of three runs."""
    runs = []
    for _ in range(3):
        with tempfile.TemporaryDirectory() as directory:
            runs.append(asyncio.run(_measure(Path(directory))))
    for key in runs[0]:
        values = sorted(run[key] for run in runs)
        print(f"{key}: {values[1]:.1f}")


if __name__ == "__main__":
    main()
