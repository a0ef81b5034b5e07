"""The registry of running fills: at most one per digest, however many clients ask.

Each ``Fill`` owns its run and its release rule (``cachesvc.mirror.fill``); this only
starts them, finds them, shares the in-memory budget among them, and stops them at
shutdown. A fill tells the registry when it ended (``on_end``), synchronously at the
end of its task, so a blob is never both committed and still listed as filling after
its fill's waiters wake.
"""

from __future__ import annotations

import asyncio

from cachesvc.metrics import Metrics
from cachesvc.mirror.fill import DEFAULT_PACING, BodyOpener, Fill, Pacing
from cachesvc.mirror.heap import release_free_memory
from cachesvc.oci import Digest
from cachesvc.store.store import Store

TRIM_DELAY = 1.0  # seconds after the last fill ended before free heap memory is returned


class FillManager:
    """The registry of running fills: at most one per digest."""

    def __init__(
        self,
        store: Store,
        metrics: Metrics,
        *,
        stall_timeout: float,
        pacing: Pacing = DEFAULT_PACING,
    ) -> None:
        self._store = store
        self._metrics = metrics
        self._stall = stall_timeout
        self._pacing = pacing
        self._fills: dict[str, Fill] = {}

    def get(self, digest: Digest) -> Fill | None:
        """The running fill for ``digest``, if any."""
        return self._fills.get(str(digest))

    def running(self) -> list[Fill]:
        """Every running fill (for status and metrics)."""
        return list(self._fills.values())

    def start(self, digest: Digest, registry: str, opener: BodyOpener) -> tuple[Fill, bool]:
        """Join the running fill for ``digest`` or start one; returns (fill, started)."""
        existing = self._fills.get(str(digest))
        if existing is not None:
            return existing, False
        fill = Fill(
            digest,
            registry,
            opener,
            self._store,
            self._metrics,
            stall_timeout=self._stall,
            pacing=self._pacing,
            on_end=self._ended,
        )
        self._fills[str(digest)] = fill
        self._share_memory()
        fill.start()
        self._metrics.fills_in_flight.inc()
        return fill, True

    async def close(self) -> None:
        """Cancel every running fill (their temp files are removed)."""
        tasks = [f.task for f in self._fills.values() if f.task is not None]
        for task in tasks:
            task.cancel()
        if tasks:
            self._metrics.shutdown_aborted.inc(len(tasks))
            await asyncio.gather(*tasks, return_exceptions=True)

    async def wait_idle(self, grace: float) -> None:
        """Let running fills finish, up to ``grace`` seconds (graceful shutdown)."""
        tasks = [f.task for f in self._fills.values() if f.task is not None]
        if tasks:
            await asyncio.wait(tasks, timeout=grace)

    def _ended(self, fill: Fill) -> None:
        self._fills.pop(str(fill.digest), None)
        self._share_memory()
        if not self._fills:
            # Followers still sending the last bytes hold chunks: trim a little later.
            asyncio.get_running_loop().call_later(TRIM_DELAY, self._trim_if_idle)
        self._metrics.fills_in_flight.dec()

    def _trim_if_idle(self) -> None:
        if not self._fills:
            release_free_memory()

    def _share_memory(self) -> None:
        pacing = self._pacing
        window = min(pacing.memory_bytes, pacing.memory_total // max(1, len(self._fills)))
        for fill in self._fills.values():
            fill.window = window
