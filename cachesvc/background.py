"""Stopping background tasks the one way shutdown needs: cancel, then wait for the end.

Eviction, scrub, cluster membership, containerd wiring and the prewarm job registries each
run loops in the background. Stopping one means cancelling it *and* awaiting it, so that
nothing it holds (a lease, a file, a connection) outlives ``stop``; the ``CancelledError``
the task ends with is the expected outcome, not an error. Written once here so no stop path
forgets the await, or lets the cancellation escape into the caller.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterable
from typing import Any

__all__ = ["cancel_all", "cancel_and_wait"]


async def cancel_and_wait(task: asyncio.Task[Any] | None) -> None:
    """Cancel ``task`` (if any) and wait until it has ended."""
    if task is None:
        return
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def cancel_all(tasks: Iterable[asyncio.Task[Any] | None]) -> None:
    """Cancel every task that has not ended and wait for all of them; their errors are
    theirs (already recorded by their own jobs), so none is raised here."""
    running = [t for t in tasks if t is not None and not t.done()]
    for task in running:
        task.cancel()
    if running:
        await asyncio.gather(*running, return_exceptions=True)
