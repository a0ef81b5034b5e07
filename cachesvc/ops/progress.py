"""Terminal progress for prewarm jobs: a bar per image and an overall bar.

On a terminal the block of bars is redrawn in place (ANSI cursor-up and clear-line)
with bytes, rate and ETA (while an image is being resolved its size is unknown: its bar
says so instead of showing 0 % or, for a zero total, 100 %); elsewhere (a pipe, a CI
log) plain lines are printed: one when an image changes state and an overall line at
most every ``PLAIN_EVERY`` seconds, so logs stay short and greppable. Input is the job JSON of
``GET /admin/v1/jobs/<id>``; nothing here does I/O except writing to the stream.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from typing import Any, TextIO

BAR_WIDTH = 24
NAME_WIDTH = 40
PLAIN_EVERY = 5.0  # seconds between overall lines when not on a terminal
RATE_WINDOW = 5.0  # seconds of samples the rate is averaged over


def human_bytes(n: float) -> str:
    """``1536`` -> ``1.5 KiB``."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"  # unreachable; keeps mypy's return check simple


def human_seconds(s: float) -> str:
    """``75`` -> ``1m15s``."""
    s = round(s)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


def bar(done: int, total: int, width: int = BAR_WIDTH) -> str:
    """``[#########---------------]``; a zero total is full once done."""
    fraction = 1.0 if total <= 0 else min(1.0, done / total)
    filled = int(fraction * width)
    return "[" + "#" * filled + "-" * (width - filled) + "]"


def waiting_bar(word: str = "resolving", width: int = BAR_WIDTH) -> str:
    """An indeterminate bar: the size is not known yet, so neither full nor empty."""
    return "[" + f" {word}… ".center(width, " ") + "]"


def sized(image: dict[str, Any]) -> bool:
    """Whether an image's sizes are known (it was resolved; a failure may come before)."""
    if image["state"] == "failed":
        return image.get("digest") is not None and int(image["blobs_total"]) > 0
    return image["state"] not in ("queued", "resolving")


def reason_of(image: dict[str, Any]) -> str:
    """The failure reason without a leading copy of the reference (named once, before it)."""
    reason = str(image.get("reason") or image["state"])
    ref = str(image["ref"])
    if reason.startswith(ref) and reason != ref:
        reason = reason[len(ref) :].lstrip(": ") or reason
    return reason


def cached_note(image: dict[str, Any]) -> str:
    """``all 3 blobs already cached`` / ``2 of 3 blobs already cached`` / ``""``."""
    cached, total = int(image.get("blobs_cached") or 0), int(image["blobs_total"])
    if not cached:
        return ""
    if cached == total:
        return f"all {total} blobs already cached" if total != 1 else "already cached"
    return f"{cached} of {total} blobs already cached"


def percent(done: int, total: int) -> int:
    """Whole percent done (100 for an empty total)."""
    return 100 if total <= 0 else min(100, int(done * 100 / total))


class Progress:
    """Renders successive snapshots of one job to ``stream``."""

    def __init__(
        self, stream: TextIO, *, tty: bool, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._stream = stream
        self._tty = tty
        self._clock = clock
        self._samples: deque[tuple[float, int]] = deque()
        self._drawn = 0
        self._states: dict[str, str] = {}
        self._last_plain = 0.0

    def rate(self) -> float | None:
        """Bytes per second over the last ``RATE_WINDOW`` seconds (None until known)."""
        if len(self._samples) < 2:
            return None
        (t0, b0), (t1, b1) = self._samples[0], self._samples[-1]
        return (b1 - b0) / (t1 - t0) if t1 > t0 else None

    def _sample(self, done: int) -> None:
        now = self._clock()
        self._samples.append((now, done))
        while len(self._samples) > 2 and now - self._samples[0][0] > RATE_WINDOW:
            self._samples.popleft()

    def overall(self, job: dict[str, Any]) -> str:
        """The overall line: images done, bytes, rate, ETA (no percent before sizes are known)."""
        done, total = int(job["bytes_done"]), int(job["bytes_total"])
        images = job["images"]
        finished = sum(1 for i in images if i["state"] in ("done", "failed"))
        waiting = sum(1 for i in images if not sized(i))
        if waiting and job["state"] in ("queued", "running"):
            text = f"resolving {waiting} of {len(images)} images, {human_bytes(done)} so far"
        else:
            text = (
                f"{percent(done, total):3d}% {human_bytes(done)}/{human_bytes(total)}, "
                f"{finished}/{len(images)} images"
            )
        rate = self.rate()
        if rate is not None and job["state"] in ("queued", "running") and (done or not waiting):
            text += f", {human_bytes(rate)}/s"
            if rate > 0 and total > done and not waiting:
                text += f", ETA {human_seconds((total - done) / rate)}"
        return text

    def update(self, job: dict[str, Any]) -> None:
        """Show a new snapshot."""
        self._sample(int(job["bytes_done"]))
        if self._tty:
            self._draw(job)
        else:
            self._plain(job)

    def _draw(self, job: dict[str, Any]) -> None:
        lines = []
        for image in job["images"]:
            name = image["ref"]
            if len(name) > NAME_WIDTH:
                name = "..." + name[-(NAME_WIDTH - 3) :]
            done, total = int(image["bytes_done"]), int(image["bytes_total"])
            state = image["state"]
            if state == "failed":
                state = f"failed: {reason_of(image)}"
            elif state == "done" and cached_note(image):
                state = f"done ({cached_note(image)})"
            if sized(image):
                lines.append(
                    f"{name:<{NAME_WIDTH}} {bar(done, total)} {percent(done, total):3d}% "
                    f"{human_bytes(done):>10}/{human_bytes(total):<10} {state}"
                )
            else:
                word = "failed" if image["state"] == "failed" else image["state"]
                tail = f" {state}" if image["state"] == "failed" else ""
                lines.append(f"{name:<{NAME_WIDTH}} {waiting_bar(word)}{tail}")
        done, total = int(job["bytes_done"]), int(job["bytes_total"])
        running = job["state"] in ("queued", "running")
        resolved = all(sized(i) or i["state"] == "failed" for i in job["images"])
        overall = waiting_bar() if running and not resolved else bar(done, total)
        lines.append(f"{'overall':<{NAME_WIDTH}} {overall} {self.overall(job)}")
        out = f"\x1b[{self._drawn}F" if self._drawn else ""
        out += "".join(f"\x1b[2K{line}\n" for line in lines)
        self._stream.write(out)
        self._stream.flush()
        self._drawn = len(lines)

    def _plain(self, job: dict[str, Any]) -> None:
        for image in job["images"]:
            state = image["state"]
            if self._states.get(image["ref"]) == state:
                continue
            self._states[image["ref"]] = state
            detail = ""
            if state == "fetching":
                detail = f" ({image['blobs_total']} blobs, {human_bytes(image['bytes_total'])})"
            elif state == "done":
                note = cached_note(image)
                detail = f" ({human_bytes(image['bytes_done'])}{', ' + note if note else ''})"
            elif state == "failed":
                detail = f": {reason_of(image)}"
            self._stream.write(f"{image['ref']}: {state}{detail}\n")
        now = self._clock()
        if job["state"] in ("queued", "running") and now - self._last_plain >= PLAIN_EVERY:
            self._last_plain = now
            self._stream.write(f"progress: {self.overall(job)}\n")
        self._stream.flush()

    def summary(self, job: dict[str, Any]) -> str:
        """The closing lines: all done, or which images failed and why."""
        images = job["images"]
        failed = [i for i in images if i["state"] != "done"]
        seconds = (job.get("finished") or 0) - (job.get("started") or 0)
        head = (
            f"prewarm {job['id']}: {len(images) - len(failed)} of {len(images)} images done, "
            f"{human_bytes(int(job['bytes_done']))} in {human_seconds(max(0.0, seconds))}"
        )
        if not failed:
            return head + "\n"
        lines = [head + f"; {len(failed)} not done ({job['state']}):"]
        lines += [f"  {i['ref']}: {reason_of(i)}" for i in failed]
        return "\n".join(lines) + "\n"
