"""Size-bounded LRU eviction with an optional age limit and a free-space floor.

A background task watches ``Store.usage_bytes`` and the free space of the filesystem
holding ``storage.root`` once a second and sweeps when the store is over
``storage.max_size`` (down to ``LOW_WATER`` of it, so it does not sweep again at the
next fill), or when that filesystem has less than ``storage.min_free`` free, whatever
else fills it (until ``min_free / LOW_WATER`` is free: the cache yields before kubelet's
eviction thresholds do), and, regardless, every ``storage.sweep_interval`` (for
``storage.max_age``). Percentages of either bound are resolved against the
filesystem's size at each check. A sweep lists blobs in a thread, then deletes on the
event loop, oldest last access first, one blob at a time, through
``cachesvc.store.retention`` (which skips pinned blobs and blobs being read or
filled, atomically on the loop). A removed blob
is simply a miss next time: nothing refers to stored blobs but digests.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import time
from typing import NamedTuple

from cachesvc.background import cancel_and_wait
from cachesvc.config import StorageConfig
from cachesvc.metrics import Metrics
from cachesvc.store.retention import Retention
from cachesvc.store.store import BlobEntry, Store

log = logging.getLogger("cachesvc.eviction")


class Disk(NamedTuple):
    """Size and free bytes of the filesystem holding storage.root."""

    total: int
    free: int


LOW_WATER = 0.9  # a size sweep stops at this fraction of storage.max_size
CHECK_SECONDS = 1.0  # how often usage is compared with max_size (no disk access)
YIELD_EVERY = 32  # deletions between yields to the event loop


class Evictor:
    """Keeps the store within its configured size and age."""

    def __init__(
        self,
        store: Store,
        config: StorageConfig,
        retention: Retention,
        metrics: Metrics,
    ) -> None:
        self._store = store
        self._config = config
        self._retention = retention
        self._metrics = metrics
        self._task: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()

    def start(self) -> None:
        """Run the watch loop in the background (only when a bound is configured)."""
        config = self._config
        bounds = (config.max_size, config.max_size_percent, config.max_age, config.min_free)
        if all(bound is None for bound in bounds):
            return
        self._task = asyncio.get_running_loop().create_task(self._watch(), name="eviction")

    async def stop(self) -> None:
        """Stop the watch loop."""
        await cancel_and_wait(self._task)
        self._task = None

    async def _watch(self) -> None:
        last_sweep = 0.0
        while True:
            over = self._goal(await self._disk()) is not None
            if over or time.monotonic() - last_sweep >= self._config.sweep_interval:
                try:
                    await self.sweep()
                except Exception:  # a failed sweep must not end eviction for good
                    log.exception("eviction sweep failed")
                last_sweep = time.monotonic()
            await asyncio.sleep(CHECK_SECONDS)

    async def sweep(self) -> int:
        """One pass: age limit first, then size and free space; returns blobs removed."""
        async with self._lock:
            entries = await asyncio.to_thread(lambda: list(self._store.entries()))
            entries.sort(key=lambda e: e.last_access)
            self._metrics.pinned_bytes.set(
                sum(e.size for e in entries if self._retention.pins.protects(str(e.digest)))
            )
            removed = 0
            kept: list[BlobEntry] = []
            if self._config.max_age is not None:
                cutoff = time.time() - self._config.max_age
                for entry in entries:
                    if entry.last_access < cutoff and self.evict(entry, "age"):
                        removed += 1
                        if removed % YIELD_EVERY == 0:
                            await asyncio.sleep(0)
                    else:
                        kept.append(entry)
                entries = kept
            removed += await self._size_phase(entries, removed)
            if removed:
                log.info("evicted %d blobs", removed)
            return removed

    async def _size_phase(self, entries: list[BlobEntry], removed: int) -> int:
        """Evict oldest first down to the goal of ``_goal``; warn if the bounds still fail."""
        target = self._goal(await self._disk())
        if target is None:
            return 0
        goal, reason = target
        count = 0
        for entry in entries:
            if self._store.usage_bytes <= goal:
                break
            if self.evict(entry, reason):
                count += 1
                if (removed + count) % YIELD_EVERY == 0:
                    await asyncio.sleep(0)
        self._warn_if_still_over(await self._disk())
        return count

    async def _disk(self) -> Disk | None:
        """The filesystem of storage.root (in a thread: a hung mount must not stall the loop)."""
        try:
            usage = await asyncio.to_thread(shutil.disk_usage, self._config.root)
        except OSError as exc:
            log.warning("cannot read the free space of storage.root: %s", exc)
            return None
        return Disk(usage.total, usage.free)

    def _bounds(self, disk: Disk | None) -> tuple[int | None, int | None]:
        """(max_size, min_free) in bytes; a percentage needs the filesystem's size."""
        if disk is None:
            return self._config.max_size, None
        floor = self._config.min_free.of(disk.total) if self._config.min_free else None
        return self._config.size_limit(disk.total), floor

    def _goal(self, disk: Disk | None) -> tuple[int, str] | None:
        """The store size a sweep must get down to and the eviction reason (``size`` for
        max_size, ``min_free``), or None when no bound is broken.

        ``max_size``: its ``LOW_WATER``. ``min_free``: the usage at which the filesystem
        has ``min_free / LOW_WATER`` free, i.e. usage minus the missing free bytes.
        """
        usage = self._store.usage_bytes
        limit, floor = self._bounds(disk)
        goals = []
        if limit is not None and usage > limit:
            goals.append((int(limit * LOW_WATER), "size"))
        if floor is not None and disk is not None and disk.free < floor:
            missing = min(int(floor / LOW_WATER), disk.total) - disk.free
            goals.append((usage - missing, "min_free"))
        if not goals:
            return None
        goal, reason = min(goals)
        return max(0, goal), reason

    def _warn_if_still_over(self, disk: Disk | None) -> None:
        usage = self._store.usage_bytes
        limit, floor = self._bounds(disk)
        if limit is not None and usage > limit:
            log.warning(
                "store still over storage.max_size after a sweep: pinned or in-use blobs hold it",
                extra={"fields": {"usage_bytes": usage, "max_size": limit}},
            )
        if floor is not None and disk is not None and disk.free < floor:
            log.warning(
                "free space on the filesystem of storage.root still below storage.min_free "
                "after a sweep: other data fills it, or pinned or in-use blobs hold the store",
                extra={"fields": {"free_bytes": disk.free, "min_free": floor,
                                  "usage_bytes": usage}},
            )  # fmt: skip

    def evict(self, entry: BlobEntry, reason: str) -> bool:
        """Remove one blob unless it is pinned or in use (no await: atomic on the loop)."""
        removal = self._retention.remove(entry.digest)
        if removal.outcome in ("pinned", "in_use"):
            self._metrics.eviction_skipped.labels(removal.outcome).inc()
            return False
        if removal.outcome == "removed":
            self._metrics.evictions.labels(reason).inc()
            self._metrics.evicted_bytes.labels(reason).inc(entry.size)
            return True
        return False
