"""Load clients: curl for bulk transfers, wrk for request rates, aiohttp for single-request latency.

curl and wrk are C programs, so on a 2-core machine the client costs as little CPU as possible
and the server under test, not the load generator, sets the number.
"""

from __future__ import annotations

import asyncio
import re
import statistics
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import aiohttp

from benchmarks.processes import run_command

MIB = 1 << 20


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


async def download(url: str, expected_size: int | None = None) -> Transfer:
    """GET ``url`` with curl into /dev/null; raise LoadError on a bad status or short body."""
    code, output = await run_command(
        ["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code} %{size_download} %{time_total}", url]
    )
    fields = output.strip().split()[-3:]
    if code != 0 or len(fields) != 3:
        raise LoadError(f"curl {url} failed ({code}): {output.strip()}")
    transfer = Transfer(int(fields[0]), int(fields[1]), float(fields[2]))
    if transfer.status != 200:
        raise LoadError(f"GET {url}: status {transfer.status}")
    if expected_size is not None and transfer.size != expected_size:
        raise LoadError(f"GET {url}: {transfer.size} bytes, expected {expected_size}")
    return transfer


async def download_together(
    urls: Sequence[str], expected_size: int | None = None
) -> tuple[float, list[Transfer]]:
    """Start one curl per URL at the same moment; return (wall seconds until all finish, each)."""
    started = time.perf_counter()
    try:
        async with asyncio.TaskGroup() as group:  # one failure cancels (and kills) the others
            tasks = [group.create_task(download(url, expected_size)) for url in urls]
    except ExceptionGroup as errors:
        first = errors.exceptions[0]
        raise LoadError(
            f"{len(errors.exceptions)} of {len(urls)} failed; first: {first}"
        ) from errors
    return time.perf_counter() - started, [task.result() for task in tasks]


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
