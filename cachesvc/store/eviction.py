"""Size-bounded LRU eviction with an optional age limit.

A background task watches ``Store.usage_bytes`` once a second and sweeps when the
store is over ``storage.max_size`` (down to ``LOW_WATER`` of it, so it does not
sweep again at the next fill) and, regardless, every ``storage.sweep_interval``
(for ``storage.max_age``). A sweep lists blobs in a thread, then deletes on the
event loop, oldest last access first, one blob at a time, through
``cachesvc.store.retention`` (which skips pinned blobs and blobs being read or
filled, atomically on the loop). A removed blob
is simply a miss next time: nothing refers to stored blobs but digests.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from cachesvc.config import StorageConfig
from cachesvc.metrics import Metrics
from cachesvc.store.retention import Retention
from cachesvc.store.store import BlobEntry, Store

log = logging.getLogger("cachesvc.eviction")

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
        if self._config.max_size is None and self._config.max_age is None:
            return
        self._task = asyncio.get_running_loop().create_task(self._watch(), name="eviction")

    async def stop(self) -> None:
        """Stop the watch loop."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _watch(self) -> None:
        last_sweep = 0.0
        while True:
            over = (
                self._config.max_size is not None
                and self._store.usage_bytes > self._config.max_size
            )
            if over or time.monotonic() - last_sweep >= self._config.sweep_interval:
                try:
                    await self.sweep()
                except Exception:  # a failed sweep must not end eviction for good
                    log.exception("eviction sweep failed")
                last_sweep = time.monotonic()
            await asyncio.sleep(CHECK_SECONDS)

    async def sweep(self) -> int:
        """One pass: age limit first, then size; returns how many blobs were removed."""
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
            limit = self._config.max_size
            if limit is not None and self._store.usage_bytes > limit:
                goal = int(limit * LOW_WATER)
                for entry in entries:
                    if self._store.usage_bytes <= goal:
                        break
                    if self.evict(entry, "size"):
                        removed += 1
                        if removed % YIELD_EVERY == 0:
                            await asyncio.sleep(0)
                if self._store.usage_bytes > limit:
                    log.warning(
                        "store still over storage.max_size after a sweep: pinned or in-use "
                        "blobs hold it",
                        extra={"fields": {"usage_bytes": self._store.usage_bytes,
                                          "max_size": limit}},
                    )  # fmt: skip
            if removed:
                log.info("evicted %d blobs", removed)
            return removed

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
