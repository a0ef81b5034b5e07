"""What the benchmark ran on: CPU, cores, kernel, date; and the machine's sha256 ceiling."""

from __future__ import annotations

import datetime
import hashlib
import os
import platform
import time
from dataclasses import dataclass
from pathlib import Path

from benchmarks.measurement import MIB

HASH_CHUNK = 1 << 20


@dataclass(frozen=True, slots=True)
class Machine:
    """The facts that go in the report's header."""

    cpu: str
    cores: int
    kernel: str
    python: str
    date: str

    def describe(self) -> str:
        """One line for the report header."""
        return (
            f"{self.cpu}, {self.cores} cores, Linux {self.kernel}, "
            f"Python {self.python}, {self.date}"
        )


def this_machine() -> Machine:
    """Read /proc/cpuinfo and uname for the current machine."""
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return Machine(
        cpu=cpu,
        cores=os.cpu_count() or 1,
        kernel=platform.release(),
        python=platform.python_version(),
        date=datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
    )


def sha256_mib_per_second(total_bytes: int) -> float:
    """hashlib sha256 throughput on one core over ``total_bytes`` in 1 MiB updates, in MiB/s."""
    chunk = os.urandom(HASH_CHUNK)
    digest = hashlib.sha256()
    rounds = max(1, total_bytes // HASH_CHUNK)
    started = time.perf_counter()
    for _ in range(rounds):
        digest.update(chunk)
    elapsed = time.perf_counter() - started
    return rounds * HASH_CHUNK / MIB / elapsed
