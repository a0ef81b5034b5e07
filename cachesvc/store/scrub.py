"""Whole-store checks: the background scrub and the ``verify`` pass, with progress.

Both hash every stored file against its name (``check_file``) and drop what is
damaged, so a file nobody has asked for since start-up cannot rot unnoticed until
the day it is needed. The scrub runs in the daemon at ``storage.scrub_rate`` bytes
per second (0: off), one pass every ``storage.scrub_interval`` seconds, the first
``min(SCRUB_START_DELAY, interval)`` after start-up (start-up is when pulls are
busiest). A ``verify`` pass (``POST /admin/v1/verify``, or ``cachesvc verify`` on the
files directly) is the same walk on demand, as fast as the disk allows.

Files this process verified already are skipped by the scrub's first pass and
checked again in later ones (a disk can rot a file after it was verified).
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field

from cachesvc.background import cancel_and_wait
from cachesvc.metrics import Metrics
from cachesvc.oci import Digest
from cachesvc.store.store import Store
from cachesvc.store.verification import Damage, Throttle, check_file

log = logging.getLogger("cachesvc.scrub")

SCRUB_START_DELAY = 60.0  # seconds after start-up before the first scrub pass


@dataclass(slots=True)
class CheckProgress:
    """How far a whole-store check got, and what it found."""

    files_total: int = 0
    bytes_total: int = 0
    files_checked: int = 0
    bytes_checked: int = 0
    damaged: list[Damage] = field(default_factory=list)

    def to_json(self) -> dict[str, object]:
        """As a verify job shows it."""
        return {
            "files_total": self.files_total, "bytes_total": self.bytes_total,
            "files_checked": self.files_checked, "bytes_checked": self.bytes_checked,
            "damaged": [d.to_json() for d in self.damaged],
        }  # fmt: skip


async def check_store(
    store: Store,
    progress: CheckProgress,
    found_by: str,
    *,
    throttle: Throttle | None = None,
    skip_verified: bool = False,
    metrics: Metrics | None = None,
) -> CheckProgress:
    """Hash every stored file (in worker threads); drop the damaged ones.

    ``progress`` is updated as files are checked, so a job can show it meanwhile.
    """
    files = await asyncio.to_thread(lambda: list(store.content.files()))
    plan = [(d, size) for d, size, _ in files if not (skip_verified and d in store.verified)]
    progress.files_total = len(plan)
    progress.bytes_total = sum(size for _, size in plan)
    for digest, size in plan:
        damage = await _check_one(store, digest, throttle)
        progress.files_checked += 1
        progress.bytes_checked += size
        if metrics is not None:
            metrics.scrubbed_bytes.inc(size)
        if damage is not None:
            progress.damaged.append(damage)
            store.drop_damaged(damage, found_by)
    return progress


async def _check_one(store: Store, digest: Digest, throttle: Throttle | None) -> Damage | None:
    try:
        damage = await asyncio.to_thread(check_file, store.path(digest), digest, throttle)
    except FileNotFoundError:
        return None  # removed meanwhile (evicted, purged): nothing to judge
    if damage is None:
        store.verified.add(digest)
    return damage


class Scrubber:
    """The background scrub: ``start`` at daemon start, ``stop`` at shutdown."""

    def __init__(self, store: Store, metrics: Metrics, *, rate: int, interval: float) -> None:
        self._store = store
        self._metrics = metrics
        self._rate = rate
        self._interval = interval
        self._task: asyncio.Task[None] | None = None
        self.passes = 0  # completed passes (status and tests)

    def start(self) -> None:
        """Begin scrubbing in the background (nothing when ``rate`` is 0)."""
        if self._rate > 0 and self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="scrub")

    async def stop(self) -> None:
        """Cancel the scrub (a file half-hashed is simply checked next time)."""
        await cancel_and_wait(self._task)
        self._task = None

    async def _run(self) -> None:
        await asyncio.sleep(min(SCRUB_START_DELAY, self._interval))
        while True:
            progress = CheckProgress()
            try:
                await check_store(
                    self._store, progress, "scrub", throttle=Throttle(self._rate),
                    skip_verified=self.passes == 0, metrics=self._metrics,
                )  # fmt: skip
            except OSError as exc:
                log.warning("scrub pass stopped: %s", exc.strerror or exc)
            self.passes += 1
            log.info(
                "scrub pass done: %d files, %d bytes checked, %d damaged",
                progress.files_checked, progress.bytes_checked, len(progress.damaged),
            )  # fmt: skip
            await asyncio.sleep(self._interval)
