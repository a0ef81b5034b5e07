"""CPU time of a process, from /proc (Linux): what a transfer costs, not just how long it took."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

_TICKS = os.sysconf("SC_CLK_TCK")
IDLE_LIMIT_SECONDS = 10.0
"""How long ``until_idle`` waits by default before giving up."""


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds the process (all its threads) has used so far."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / _TICKS


async def until_idle(
    pids: tuple[int, ...],
    *,
    step: float = 0.2,
    quiet: float = 1.5 / _TICKS,
    limit: float = IDLE_LIMIT_SECONDS,
) -> bool:
    """Wait until ``pids`` together use less than ``quiet`` CPU seconds per ``step``.

    (/proc counts in clock ticks: the default ``quiet`` allows one tick per step.)

    For work a transfer leaves behind after its last byte (a cache's fsync and commit, the
    distribution proxy's second fetch for its own store). False if still busy at ``limit``.
    """
    before = sum(cpu_seconds(pid) for pid in pids)
    for _ in range(max(1, round(limit / step))):
        await asyncio.sleep(step)
        now = sum(cpu_seconds(pid) for pid in pids)
        if now - before < quiet:
            return True
        before = now
    return False
