"""Peak resident memory of a child, from /proc (Linux)."""

from __future__ import annotations

from pathlib import Path

from benchmarks.measurement import MIB


def reset_peak_rss(pid: int) -> bool:
    """Reset the process's VmHWM to its current RSS (``5 > clear_refs``); False if refused."""
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def peak_rss_mib(pid: int) -> float:
    """The process's VmHWM (peak resident set size) in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024 / MIB
    raise RuntimeError(f"no VmHWM in /proc/{pid}/status")
