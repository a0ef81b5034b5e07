"""Render the results: a markdown table (printed and written) and a PNG chart."""

from __future__ import annotations

from pathlib import Path

from benchmarks.machine import Machine
from benchmarks.measurement import (
    BASELINE,
    CACHESVC,
    CACHESVC_BEFORE,
    CACHESVC_SYSTEMS,
    CACHESVC_UVLOOP,
    SYSTEMS,
    Row,
    Target,
)


def _number(value: float | None) -> str:
    if value is None:
        return "-"
    if value == 0 or abs(value) >= 100:
        return f"{value:,.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    if abs(value) >= 0.1:
        return f"{value:.2f}"
    return f"{value:.3g}"


def _cell(text: str) -> str:
    return " ".join(text.replace("|", "\\|").split())


SMOKE_VERDICT = "not judged at smoke sizes"


def _verdict(target: Target, judged: bool) -> str:
    met = target.met
    value = _number(target.value)
    if met is None:
        return f"{target.label}: not measured"
    if not judged:
        return f"{target.label}: {value} ({SMOKE_VERDICT})"
    return f"{target.label}: {value} {'✅ met' if met else '❌ missed'}"


def markdown(
    rows: list[Row],
    machine: Machine,
    command: str,
    notes: list[str],
    reps: int,
    *,
    judged: bool = True,
    before: str | None = None,
) -> str:
    """The results as a markdown document.

    ``judged=False`` (a smoke run: tiny sizes, one repetition) reports the values without a
    met/missed verdict: the targets are set for full sizes, and a "missed" there only alarms.
    ``before`` names the revision ``cachesvc-before`` ran (``--before``): the header says which,
    and a ``cachesvc vs cachesvc-before`` column follows the ratios to the baseline.
    """
    systems = [s for s in SYSTEMS if any(r.values.get(s) is not None for r in rows)]
    if CACHESVC not in systems:
        systems.insert(0, CACHESVC)
    # One ratio column per cachesvc variant that was measured.
    ratios = [s for s in CACHESVC_SYSTEMS if s in systems]
    compare_before = before is not None or CACHESVC_BEFORE in systems
    lines = [
        "# cachesvc benchmark results",
        "",
        f"- machine: {machine.describe()}",
        f"- command: `{command}`",
        f"- repetitions: {reps} per scenario and system, interleaved; values are medians",
        f"- baseline: the distribution registry in proxy mode ({BASELINE}); "
        "ratio = system / baseline",
        *_system_lines(before),
        f"- targets are judged on `{CACHESVC}` (the default) only; "
        f"`{CACHESVC_BEFORE if compare_before else CACHESVC_UVLOOP}` is shown for comparison",
        "",
        "| scenario | metric | "
        + " | ".join(systems)
        + "".join(f" | {s} vs baseline" for s in ratios)
        + (f" | {CACHESVC} vs {CACHESVC_BEFORE}" if compare_before else "")
        + " | targets (value: met?) |",
        "|---|---|" + "---:|" * (len(systems) + len(ratios) + int(compare_before)) + "---|",
    ]
    for row in rows:
        cells = [_number(row.values.get(s)) for s in systems]
        cells += [_number(row.ratio(s)) for s in ratios]
        if compare_before:
            cells.append(_number(row.ratio(CACHESVC, CACHESVC_BEFORE)))
        verdicts = "<br>".join(_verdict(t, judged) for t in row.targets) or "-"
        if row.note:
            verdicts += f"<br>_{_cell(row.note)}_"
        for failure in row.failures:
            verdicts += f"<br>**failed:** {_cell(failure)}"
        lines.append(
            f"| {row.scenario} | {row.metric} ({row.unit}) | "
            + " | ".join(cells)
            + f" | {verdicts} |"
        )
    met = [t.met for r in rows for t in r.targets]
    if judged:
        summary = (
            f"Targets met: {met.count(True)}; missed: {met.count(False)}; "
            f"not measured: {met.count(None)}."
        )
    else:
        summary = (
            f"Targets are {SMOKE_VERDICT} (tiny images, one repetition): this run only "
            "checks that the harness works. `make bench` judges them."
        )
    lines += ["", summary]
    if notes:
        lines += ["", "## Notes", "", *(f"- {note}" for note in notes)]
    return "\n".join(lines) + "\n"


def _system_lines(before: str | None) -> list[str]:
    """The header lines that say what each cachesvc column ran."""
    if before is None:
        return [
            f"- {CACHESVC}: the default configuration (event loop asyncio); "
            f"{CACHESVC_UVLOOP}: the same plus `event_loop: uvloop`; both send hits with "
            "cachesvc.zerocopy, not run in the containerd and store scenarios",
        ]
    return [
        f"- {CACHESVC}: this checkout, the default configuration (event loop asyncio)",
        f"- {CACHESVC_BEFORE}: revision {before}, the same configuration, interleaved with "
        f"the others in warm, cold, herd, manifests and memory (not run in containerd and "
        f"store); `{CACHESVC} vs {CACHESVC_BEFORE}` = this checkout / that revision "
        "(> 1 is better for rates, < 1 for times, CPU and memory)",
        f"- {CACHESVC_UVLOOP} is not run with --before (it would add a fourth system to "
        "every interleaved scenario on this machine's cores)",
    ]


def chart(rows: list[Row], machine: Machine, path: Path) -> None:
    """Two panels: each system relative to the baseline, and how far each target is met."""
    import matplotlib  # benchmark-only dependency: imported when drawing

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # only after selecting the Agg backend
    from matplotlib.ticker import FuncFormatter, NullFormatter

    plain = FuncFormatter(lambda value, _: f"{value:g}")

    compared = [r for r in rows if r.values.get(BASELINE)]
    targets = [(r, t) for r in rows for t in r.targets]
    height = max(4.0, 0.3 * max(len(compared) * 3, len(targets)) + 1.5)
    fig, (left, right) = plt.subplots(1, 2, figsize=(16, height))

    labels = [f"{r.scenario}\n{r.metric}" for r in compared]
    others = [s for s in SYSTEMS if s != BASELINE and any(r.ratio(s) for r in compared)]
    palette = {system: f"C{k}" for k, system in enumerate(SYSTEMS)}  # stable per system
    labelled: set[str] = set()
    for i, row in enumerate(compared):
        # Only the systems measured in this row share its slot, so the bars stay wide.
        present = [(s, value) for s in others if (value := row.ratio(s))]
        bar = 0.8 / max(1, len(present))
        for k, (system, value) in enumerate(present):
            left.barh(
                i + (k - (len(present) - 1) / 2) * bar,
                value,
                height=bar,
                color=palette[system],
                label=None if system in labelled else system,
            )
            labelled.add(system)
    left.axvline(1.0, color="black", linewidth=1, linestyle="--", label=f"{BASELINE} = 1")
    left.set_yticks(range(len(compared)), labels, fontsize=7)
    left.invert_yaxis()
    left.set_xscale("log")
    left.xaxis.set_major_formatter(plain)
    left.xaxis.set_minor_formatter(NullFormatter())
    left.set_xlabel("median relative to the distribution proxy (log scale)")
    left.set_title("Each system vs the baseline")
    left.legend(fontsize=8, loc="lower right")

    scores = [t.score for _, t in targets]
    colors = [
        "grey" if t.met is None else ("tab:green" if t.met else "tab:red") for _, t in targets
    ]
    right.barh(
        range(len(targets)),
        [min(s, 100.0) if s is not None else 0.0 for s in scores],
        color=colors,
    )
    right.axvline(1.0, color="black", linewidth=1, linestyle="--", label="target")
    right.set_yticks(
        range(len(targets)), [f"{r.scenario}:\n{t.label}" for r, t in targets], fontsize=7
    )
    right.invert_yaxis()
    right.set_xscale("log")
    right.xaxis.set_major_formatter(plain)
    right.xaxis.set_minor_formatter(NullFormatter())
    right.set_xlabel("achieved / required (>= 1 means met; grey = not measured)")
    right.set_title(f"{CACHESVC} targets (default event loop only)")
    right.legend(fontsize=8, loc="lower right")

    fig.suptitle(f"cachesvc benchmarks — {machine.describe()}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
