"""Coalesce concurrent calls for one key into one task that outlives any caller."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class SingleFlight(Generic[K, V]):
    """At most one running call per key; later callers await the same result.

    The call runs as its own task, so a caller that is cancelled (a client hung up)
    does not cancel the work the others are waiting for.
    """

    def __init__(self) -> None:
        self._tasks: dict[K, asyncio.Task[V]] = {}

    async def do(self, key: K, call: Callable[[], Awaitable[V]]) -> tuple[V, bool]:
        """Run ``call`` for ``key`` or join the running one; returns (value, joined)."""
        task = self._tasks.get(key)
        joined = task is not None
        if task is None:
            task = asyncio.ensure_future(call())
            self._tasks[key] = task
            task.add_done_callback(lambda t: self._finished(key, t))
        return await asyncio.shield(task), joined

    def _finished(self, key: K, task: asyncio.Task[V]) -> None:
        self._tasks.pop(key, None)
        if not task.cancelled():
            task.exception()  # retrieved: every waiter may have gone (clients hung up)

    def __len__(self) -> int:
        return len(self._tasks)
