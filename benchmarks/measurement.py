"""What a scenario produces: rows of per-system medians, and targets checked against them."""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

MIB = 1 << 20
"""Bytes in a MiB: every size and rate in the report is in MiB."""

BASELINE = "distribution"
CACHESVC = "cachesvc"
"""cachesvc with its default configuration (asyncio event loop): the targets are judged on it."""
CACHESVC_UVLOOP = "cachesvc-uvloop"
"""The same cachesvc configuration plus ``event_loop: uvloop``, measured for comparison only."""
CACHESVC_BEFORE = "cachesvc-before"
"""The same configuration as ``cachesvc``, run from an older revision (``--before REV``)."""
CACHESVC_SYSTEMS = (CACHESVC, CACHESVC_UVLOOP, CACHESVC_BEFORE)
SYSTEMS = (CACHESVC, CACHESVC_BEFORE, CACHESVC_UVLOOP, BASELINE, "nginx", "sha256")

Comparison = Literal[">=", "<=", "==", "<"]


@dataclass(frozen=True, slots=True)
class Target:
    """One goal: ``value op bound``; ``value`` is a ratio or an absolute number, None if unknown."""

    label: str
    value: float | None
    op: Comparison
    bound: float

    @property
    def met(self) -> bool | None:
        """True/False when measured, None when the value is missing."""
        if self.value is None:
            return None
        if self.op == ">=":
            return self.value >= self.bound
        if self.op == "<=":
            return self.value <= self.bound
        if self.op == "<":
            return self.value < self.bound
        return abs(self.value - self.bound) < 1e-9

    @property
    def score(self) -> float | None:
        """How far the value is toward the bound: >= 1.0 means met (for the chart)."""
        if self.value is None:
            return None
        if self.op == ">=":
            return self.value / self.bound if self.bound else None
        if self.op in ("<=", "<"):
            return self.bound / self.value if self.value else float("inf")
        return 1.0 if self.met else min(self.value, self.bound) / max(self.value, self.bound)


@dataclass(frozen=True, slots=True)
class Row:
    """One measured quantity of one scenario, for every system that took part."""

    scenario: str
    metric: str
    unit: str
    values: dict[str, float | None]
    targets: list[Target] = field(default_factory=list)
    note: str = ""
    failures: list[str] = field(default_factory=list)

    def ratio(self, system: str = CACHESVC, reference: str = BASELINE) -> float | None:
        """``system``'s median divided by ``reference``'s, when both exist."""
        return ratio(self.values.get(system), self.values.get(reference))


def median(samples: Sequence[float]) -> float | None:
    """The median of the samples, None when there are none."""
    return statistics.median(samples) if samples else None


def ratio(value: float | None, reference: float | None) -> float | None:
    """``value / reference`` when both are known and the reference is non-zero."""
    if value is None or reference is None or reference == 0:
        return None
    return value / reference
