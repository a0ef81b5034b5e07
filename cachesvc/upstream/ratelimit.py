"""Per-registry limits on upstream requests: concurrency, a token bucket, a bounded queue.

``max_concurrent`` bounds upstream requests open at once (a blob GET holds its slot
until the body is read). ``requests_per_second`` is a token bucket of ``burst`` tokens
refilled at that rate; with the default ``burst`` of 1 requests leave at least
``1/rate`` seconds apart, measured from when each was actually sent, so no window of
``N/rate`` seconds ever holds more than ``N`` of them. Every attempt counts (failover
to a second endpoint and the retry after a 401 challenge are requests upstream sees);
token-service requests and redirect hops to a CDN do not.

Requests beyond the limits wait in FIFO order, at most ``queue_size`` of them and each
at most ``queue_timeout``. A request that would certainly wait longer (the bucket's
arithmetic says so) is refused at once instead of after the timeout. Refusals are
``UpstreamRateLimited``: the client gets 429 ``TOOMANYREQUESTS`` with ``Retry-After``,
and a tag lookup falls back to its last known digest, rather than piling onto upstream.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

from cachesvc.clock import SYSTEM_CLOCK, Clock
from cachesvc.errors import UpstreamRateLimited
from cachesvc.metrics import Metrics


@dataclass(slots=True)
class Ticket:
    """One admitted request: its queue deadline (monotonic seconds)."""

    deadline: float


class Limiter:
    """The limits of one registry (see the module docstring)."""

    def __init__(
        self,
        registry: str,
        *,
        max_concurrent: int | None,
        rate: float | None,
        burst: int,
        queue_size: int,
        queue_timeout: float,
        metrics: Metrics,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        self.registry = registry
        self._rate = rate
        self._burst = float(burst)
        self._queue_size = queue_size
        self._queue_timeout = queue_timeout
        self._metrics = metrics
        self._clock = clock
        self._slots = asyncio.Semaphore(max_concurrent) if max_concurrent else None
        self._max_concurrent = max_concurrent
        self._tokens = float(burst)
        self._refilled_at = self._clock.monotonic()
        self._pace_lock = asyncio.Lock()
        self._waiting = 0
        self._rate_waiting = 0

    @asynccontextmanager
    async def slot(self) -> AsyncIterator[Ticket]:
        """Hold one of ``max_concurrent`` slots for the duration of the block."""
        ticket = Ticket(self._clock.monotonic() + self._queue_timeout)
        if self._slots is None:
            yield ticket
            return
        if self._slots.locked():
            async with self._queued():
                try:
                    async with asyncio.timeout(self._queue_timeout):
                        await self._slots.acquire()
                except TimeoutError:
                    raise self._refuse("queue_timeout", 1.0) from None
        else:
            await self._slots.acquire()
        try:
            yield ticket
        finally:
            self._slots.release()

    def renew(self, ticket: Ticket) -> None:
        """Give a request a fresh queue budget for its next endpoint (failover).

        The time spent on an endpoint that timed out is not time spent waiting for
        our limiter; without this a failover could be refused with our own 429.
        """
        ticket.deadline = max(ticket.deadline, self._clock.monotonic() + self._queue_timeout)

    async def pace(self, ticket: Ticket) -> None:
        """Take one token from the bucket, waiting (FIFO) within the ticket's deadline."""
        if self._rate is None:
            return
        self._refill()
        if self._rate_waiting == 0 and not self._pace_lock.locked() and self._tokens >= 1:
            self._tokens -= 1
            return
        # Tokens the requests ahead of us and this one need, and how long they take to come.
        missing = self._rate_waiting + 1 - self._tokens
        estimate = max(0.0, missing / self._rate)
        remaining = ticket.deadline - self._clock.monotonic()
        if estimate > remaining:
            raise self._refuse("rate", estimate)
        self._rate_waiting += 1
        try:
            async with self._queued(), asyncio.timeout(max(0.0, remaining)), self._pace_lock:
                while True:
                    self._refill()
                    if self._tokens >= 1:
                        self._tokens -= 1
                        return
                    await asyncio.sleep((1 - self._tokens) / self._rate)
        except TimeoutError:
            raise self._refuse("queue_timeout", estimate) from None
        finally:
            self._rate_waiting -= 1

    def _refill(self) -> None:
        assert self._rate is not None
        now = self._clock.monotonic()
        self._tokens = min(self._burst, self._tokens + (now - self._refilled_at) * self._rate)
        self._refilled_at = now

    @asynccontextmanager
    async def _queued(self) -> AsyncIterator[None]:
        if self._waiting >= self._queue_size:
            retry = self._waiting / self._rate if self._rate else 1.0
            raise self._refuse("queue_full", retry)
        self._waiting += 1
        self._metrics.limiter_queue.labels(self.registry).set(self._waiting)
        try:
            yield
        finally:
            self._waiting -= 1
            self._metrics.limiter_queue.labels(self.registry).set(self._waiting)

    def _refuse(self, reason: str, retry_after: float) -> UpstreamRateLimited:
        self._metrics.limiter_rejections.labels(self.registry, reason).inc()
        limits = []
        if self._rate is not None:
            limits.append(f"{self._rate:g} requests/s")
        if self._max_concurrent:
            limits.append(f"{self._max_concurrent} concurrent")
        return UpstreamRateLimited(
            f"cachesvc's own upstream limit for {self.registry} ({', '.join(limits)}) is "
            f"reached ({reason.replace('_', ' ')}); retry in {math.ceil(retry_after)}s",
            retry_after=retry_after,
            own_limit=True,
        )
