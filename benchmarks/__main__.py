"""``python -m benchmarks [--smoke] [--reps N] [--out DIR] [--before REV]``: run, write the report.

With ``--before REV`` that revision's cachesvc (exported from git, see ``revision``) runs as
``cachesvc-before`` with the same configuration, interleaved with the others in cachesvc-uvloop's
place, and the table gains a ``cachesvc vs cachesvc-before`` column.

Exit status: 0 when every measurement could be taken (targets may still be missed: they are
results, not errors); 1 when a scenario failed for some system, or cachesvc, cachesvc-uvloop or
cachesvc-before could not be started (see the notes in the report); 2 when the lab itself could
not be started or ``--before``'s revision could not be exported.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import shlex
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from benchmarks import scenarios, startup
from benchmarks.content import PushError
from benchmarks.lab import Lab, Plan
from benchmarks.load import download_executor
from benchmarks.machine import this_machine
from benchmarks.measurement import CACHESVC, CACHESVC_BEFORE, CACHESVC_UVLOOP, Row
from benchmarks.processes import ChildError
from benchmarks.report import chart, markdown
from benchmarks.revision import Revision, RevisionError, exported
from benchmarks.systems import REPO_ROOT

DEFAULT_REPS = 9  # several ratios sit near their target lines: 9 medians flip less than 5
DEFAULT_OUT = Path(__file__).resolve().parent / "results"
SMOKE_OUT = Path(tempfile.gettempdir()) / "cachesvc-bench-smoke"


def _arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description="cachesvc (asyncio and uvloop) vs the distribution registry's proxy mode "
        "vs nginx, on loopback.",
    )
    parser.add_argument(
        "--smoke", action="store_true", help="tiny sizes, one repetition (for make test)"
    )
    parser.add_argument(
        "--reps", type=int, default=None, help=f"repetitions per scenario (default {DEFAULT_REPS})"
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help=f"where latest.md and latest.png go (default {DEFAULT_OUT}; "
        f"with --smoke {SMOKE_OUT}, so a smoke run never replaces the committed results)",
    )
    parser.add_argument(
        "--logs", type=Path, default=None, help="copy the children's logs here at the end"
    )
    parser.add_argument(
        "--only",
        action="append",
        default=None,
        help="run only the named scenario (repeatable): "
        "warm, cold, herd, manifests, containerd, memory, store",
    )
    parser.add_argument(
        "--before",
        metavar="REV",
        default=None,
        help="also run this git revision's cachesvc (same configuration) as cachesvc-before, "
        "interleaved, instead of cachesvc-uvloop; adds a 'cachesvc vs cachesvc-before' column",
    )
    return parser.parse_args(argv)


async def _run(
    plan: Plan, reps: int, only: set[str] | None, logs: Path | None, before: Revision | None
) -> tuple[list[Row], list[str]]:
    """The rows, and the problems that are not a row's (a system that did not start)."""
    asyncio.get_running_loop().set_default_executor(download_executor())
    async with Lab.open(plan, logs, before) as lab:
        problems = [
            f"**failed:** {system} could not be started: {' '.join(reason.split())[:500]}"
            for system, reason in (
                (CACHESVC, lab.cachesvc_reason),
                (CACHESVC_UVLOOP, lab.cachesvc_uvloop_reason),
                (CACHESVC_BEFORE, lab.cachesvc_before_reason),
            )
            if reason is not None
        ]
        runs: list[tuple[str, Callable[[], Awaitable[list[Row]]]]] = [
            ("warm", lambda: scenarios.warm_blob(lab, reps)),
            ("cold", lambda: scenarios.cold_blob(lab, reps)),
            ("herd", lambda: scenarios.thundering_herd(lab, reps)),
            ("manifests", lambda: scenarios.manifest_rates(lab, reps)),
            ("containerd", lambda: scenarios.containerd_fetch(lab, reps)),
            ("memory", lambda: scenarios.peak_memory(lab)),
            ("store", lambda: startup.store_scale(lab, reps)),
        ]
        rows: list[Row] = []
        for name, run in runs:
            if only is not None and name not in only:
                continue
            if name == "containerd" and not plan.containerd:
                continue
            started = time.perf_counter()
            new_rows = await run()
            print(f"[bench] {name}: {time.perf_counter() - started:.1f} s", file=sys.stderr)
            rows.extend(new_rows)
        return rows, problems


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; see the module docstring for the exit status."""
    args = _arguments(argv)
    plan = Plan.smoke() if args.smoke else Plan.full()
    reps = args.reps if args.reps is not None else (1 if args.smoke else DEFAULT_REPS)
    if reps < 1:
        print("--reps must be at least 1", file=sys.stderr)
        return 2
    command = "python -m benchmarks " + shlex.join(sys.argv[1:] if argv is None else argv)
    machine = this_machine()
    started = time.perf_counter()
    only = set(args.only) if args.only else None
    try:
        with contextlib.ExitStack() as stack:
            before = (
                None
                if args.before is None
                else stack.enter_context(exported(REPO_ROOT, args.before))
            )
            rows, problems = asyncio.run(_run(plan, reps, only, args.logs, before))
    except RevisionError as exc:
        print(f"--before {args.before}: {exc}", file=sys.stderr)
        return 2
    except (ChildError, PushError) as exc:
        print(f"benchmark lab could not start: {exc}", file=sys.stderr)
        return 2
    elapsed = time.perf_counter() - started
    notes = [*problems, f"total run time {elapsed:.0f} s"]
    if not plan.containerd:
        notes.append("containerd scenario skipped in --smoke")
    text = markdown(
        rows,
        machine,
        command.strip(),
        notes,
        reps,
        judged=not args.smoke,
        before=None if before is None else f"{before.subject} ({before.commit})",
    )
    out: Path = args.out or (SMOKE_OUT if args.smoke else DEFAULT_OUT)
    out.mkdir(parents=True, exist_ok=True)
    (out / "latest.md").write_text(text)
    chart(rows, machine, out / "latest.png")
    print(text)
    return 1 if problems or any(row.failures for row in rows) else 0


if __name__ == "__main__":
    raise SystemExit(main())
