"""``python -m benchmarks --before REV``: an older revision's cachesvc runs beside today's.

Before/after on a shared machine is only meaningful inside one interleaved run, so the harness
exports the revision with ``git archive`` and runs its cachesvc as ``cachesvc-before``. These
tests check the plumbing (the export really is the one imported, it is removed afterwards, the
table gains the column and names the revision), not any speed.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.machine import Machine
from benchmarks.measurement import BASELINE, CACHESVC, CACHESVC_BEFORE, Row
from benchmarks.report import markdown
from benchmarks.revision import RevisionError, exported
from benchmarks.systems import REPO_ROOT
from tests.peers.require import require

MACHINE = Machine("test CPU", 2, "6.1", "3.11", "2026-12-01")


def _head() -> str:
    return subprocess.run(
        ["git", "-C", str(REPO_ROOT), "rev-parse", "HEAD"],
        capture_output=True,
        check=True,
        text=True,
    ).stdout.strip()


def test_an_exported_revision_is_the_cachesvc_that_imports_and_is_removed_afterwards() -> None:
    with exported(REPO_ROOT, "HEAD") as revision:
        assert revision.commit == _head()
        assert revision.commit.startswith(revision.subject.split()[0])
        assert (revision.root / "cachesvc" / "__init__.py").is_file()
        root = revision.root
    assert not root.exists()
    assert not root.parent.exists()


def test_an_unknown_revision_is_a_clear_error() -> None:
    with pytest.raises(RevisionError, match="no-such-revision"), exported(REPO_ROOT, "no-such-revision"):
        pass


def test_the_table_names_the_revision_and_has_the_before_column() -> None:
    rows = [
        Row("warm", "throughput", "MiB/s", {CACHESVC: 300.0, CACHESVC_BEFORE: 200.0, BASELINE: 100.0})
    ]  # fmt: skip
    text = markdown(rows, MACHINE, "python -m benchmarks --before v1", [], 5, before="abc1234 old")
    assert "cachesvc-before: revision abc1234 old" in text
    header = next(line for line in text.splitlines() if line.startswith("| scenario"))
    assert header.endswith("| cachesvc vs baseline | cachesvc-before vs baseline "
                           "| cachesvc vs cachesvc-before | targets (value: met?) |")  # fmt: skip
    row = next(line for line in text.splitlines() if line.startswith("| warm"))
    assert "| 300 | 200 | 100 | 3.00 | 2.00 | 1.50 |" in row


def test_without_before_there_is_no_before_column() -> None:
    rows = [Row("warm", "throughput", "MiB/s", {CACHESVC: 300.0, BASELINE: 100.0})]
    text = markdown(rows, MACHINE, "python -m benchmarks", [], 5)
    assert CACHESVC_BEFORE not in text


@pytest.mark.peers
@pytest.mark.timeout(90)
def test_a_smoke_run_with_before_head_reports_the_column_and_cleans_up(tmp_path: Path) -> None:
    for binary, package in (("docker-registry", "docker-registry"), ("nginx", "nginx")):
        require(binary, package)
    temp = tmp_path / "tmp"
    temp.mkdir()
    out = tmp_path / "out"
    result = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--smoke", "--before", "HEAD", "--only", "warm",
         "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=80,
        cwd=REPO_ROOT,
        env={**os.environ, "TMPDIR": str(temp)},
        check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    text = (out / "latest.md").read_text()
    assert f"cachesvc-before: revision {_head()[:7]}" in text
    row = next(line for line in text.splitlines() if line.startswith("| warm blob"))
    cells = [cell.strip() for cell in row.strip("|").split("|")]
    header = next(line for line in text.splitlines() if line.startswith("| scenario"))
    columns = [cell.strip() for cell in header.strip("|").split("|")]
    before_ratio = cells[columns.index("cachesvc vs cachesvc-before")]
    assert float(before_ratio) > 0  # both systems measured, so the ratio is a number
    assert float(cells[columns.index(CACHESVC_BEFORE)].replace(",", "")) > 0
    assert not list(temp.glob("cachesvc-before-*"))  # the export is gone
    assert not list(temp.glob("cachesvc-bench-*"))  # and the lab's work directory
