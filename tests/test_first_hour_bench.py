"""``make test``'s benchmark smoke run reports values without a met/missed verdict: its sizes
are tiny, so a "missed" would only alarm a new user; a full run still judges every target."""

from __future__ import annotations

from benchmarks.machine import Machine
from benchmarks.measurement import CACHESVC, Row, Target
from benchmarks.report import markdown

MACHINE = Machine("test CPU", 2, "6.1", "3.11", "2026-12-01")


def _rows() -> list[Row]:
    return [
        Row("warm blob", "throughput", "MiB/s", {CACHESVC: 90.0},
            [Target("parity", 0.5, ">=", 0.95), Target("floor", 2.0, ">=", 1.0)]),
        Row("herd", "upstream GETs", "count", {CACHESVC: None},
            [Target("single flight", None, "<=", 1)]),
    ]  # fmt: skip


def test_a_smoke_run_does_not_judge_targets() -> None:
    text = markdown(_rows(), MACHINE, "python -m benchmarks --smoke", [], 1, judged=False)
    assert "missed" not in text
    assert "✅" not in text
    assert "❌" not in text
    assert "parity: 0.50 (not judged at smoke sizes)" in text
    assert "single flight: not measured" in text
    assert "Targets are not judged at smoke sizes (tiny images, one repetition)" in text


def test_a_full_run_judges_every_target() -> None:
    text = markdown(_rows(), MACHINE, "python -m benchmarks", [], 9)
    assert "parity: 0.50 ❌ missed" in text
    assert "floor: 2.00 ✅ met" in text
    assert "Targets met: 1; missed: 1; not measured: 1." in text
