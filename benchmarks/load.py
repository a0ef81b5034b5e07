"""Load clients: http.client threads for bulk transfers, wrk for request rates, aiohttp for
single-request latency.

On a 2-core machine the client must cost as little CPU as possible so that the server under
test, not the load generator, sets the number: wrk is C, and the bulk reader does one
GIL-free ``readinto`` per MiB.
"""

from __future__ import annotations

import asyncio
import http.client
import re
import statistics
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from urllib.parse import urlsplit

import aiohttp

from benchmarks.measurement import MIB
from benchmarks.processes import run_command

READ_BUFFER = 1 << 20
MAX_PARALLEL = 64


class LoadError(RuntimeError):
    """A load client failed or a response was not what the scenario needs."""


@dataclass(frozen=True, slots=True)
class Transfer:
    """One completed download."""

    status: int
    size: int
    seconds: float

    @property
    def mib_per_second(self) -> float:
        """Throughput in MiB/s."""
        return self.size / MIB / self.seconds if self.seconds > 0 else 0.0


@dataclass(frozen=True, slots=True)
class Rate:
    """What wrk measured for one URL."""

    requests_per_second: float
    p99_ms: float
    non_2xx: int
    errors: int


def _blocking_download(url: str) -> Transfer:
    parts = urlsplit(url)
    buffer = memoryview(bytearray(READ_BUFFER))
    started = time.perf_counter()
    connection = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port, timeout=300)
    try:
        connection.request("GET", parts.path + (f"?{parts.query}" if parts.query else ""))
        response = connection.getresponse()
        size = 0
        while count := response.readinto(buffer):
            size += count
    finally:
        connection.close()
    return Transfer(response.status, size, time.perf_counter() - started)


def download_executor() -> ThreadPoolExecutor:
    """An executor big enough for every concurrent download; install it as the loop default."""
    return ThreadPoolExecutor(max_workers=MAX_PARALLEL, thread_name_prefix="download")


async def download(url: str, expected_size: int | None = None) -> Transfer:
    """GET ``url``, discarding the body; raise LoadError on a bad status or a short body.

    A blocking ``http.client`` reading into one 1 MiB buffer, in a thread: the read releases the
    GIL, costs one syscall per MiB, and is as fast as curl here without a process per request.
    Time runs from sending the request to the last byte.
    """
    try:
        transfer = await asyncio.to_thread(_blocking_download, url)
    except (OSError, http.client.HTTPException) as exc:
        raise LoadError(f"GET {url}: {type(exc).__name__}: {exc}") from exc
    if transfer.status != 200:
        raise LoadError(f"GET {url}: status {transfer.status}")
    if expected_size is not None and transfer.size != expected_size:
        raise LoadError(f"GET {url}: {transfer.size} bytes, expected {expected_size}")
    return transfer


async def download_together(urls: Sequence[str], expected_size: int | None = None) -> float:
    """Start one download per URL at the same moment; return the wall seconds until all end."""
    # The default executor must have a thread per URL, see ``download_executor``.
    started = time.perf_counter()
    results = await asyncio.gather(
        *(download(url, expected_size) for url in urls), return_exceptions=True
    )
    wall = time.perf_counter() - started
    errors = [r for r in results if isinstance(r, BaseException)]
    if errors:
        raise LoadError(f"{len(errors)} of {len(urls)} downloads failed; first: {errors[0]}")
    return wall


_WRK_RATE = re.compile(r"Requests/sec:\s+([\d.]+)")
_WRK_P99 = re.compile(r"^\s*99%\s+([\d.]+)(us|ms|s)\s*$", re.MULTILINE)
_WRK_NON_2XX = re.compile(r"Non-2xx or 3xx responses:\s+(\d+)")
_WRK_ERRORS = re.compile(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)")
_TO_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0}


async def request_rate(
    url: str, connections: int, seconds: float, headers: Mapping[str, str]
) -> Rate:
    """Run wrk (one thread, ``connections`` keep-alive connections) against ``url``."""
    argv = [
        "wrk",
        "-t1",
        f"-c{connections}",
        f"-d{max(1, round(seconds))}s",
        "--latency",
        "--timeout",
        "10s",
    ]
    for key, value in headers.items():
        argv += ["-H", f"{key}: {value}"]
    code, output = await run_command([*argv, url])
    rate = _WRK_RATE.search(output)
    p99 = _WRK_P99.search(output)
    if code != 0 or rate is None or p99 is None:
        raise LoadError(f"wrk {url} failed ({code}): {output.strip()}")
    non_2xx = _WRK_NON_2XX.search(output)
    errors = _WRK_ERRORS.search(output)
    return Rate(
        requests_per_second=float(rate.group(1)),
        p99_ms=float(p99.group(1)) * _TO_MS[p99.group(2)],
        non_2xx=int(non_2xx.group(1)) if non_2xx else 0,
        errors=sum(int(n) for n in errors.groups()) if errors else 0,
    )


async def median_latency_ms(session: aiohttp.ClientSession, url: str, count: int) -> float:
    """Median latency of ``count`` sequential GETs on one keep-alive connection, in ms."""
    samples: list[float] = []
    for _ in range(count):
        started = time.perf_counter()
        async with session.get(url) as response:
            await response.read()
            if response.status != 200:
                raise LoadError(f"GET {url}: status {response.status}")
        samples.append((time.perf_counter() - started) * 1000.0)
    return statistics.median(samples)
