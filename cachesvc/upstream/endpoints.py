"""Passive health of a registry's endpoints: cool-down with backoff, and Retry-After.

Endpoints are tried in configured order (a CDN mirror first, the origin last). Nothing
probes them in the background; health is learnt from real requests:

- a connect error, timeout or 5xx *fails* an endpoint: it is skipped for ``cooldown``
  seconds, doubled per consecutive failure up to ``max_cooldown``. When the cool-down
  ends the next request tries it again; a success restores it at once. Failures seen
  while an endpoint is already cooling down (requests that were in flight together) do
  not escalate the backoff.
- a 429 *blocks* an endpoint until its ``Retry-After`` (or the backoff without one): it
  is not asked again before then, whatever else happens.

When every endpoint is cooling down, those whose last failure was *fast* (refused
connection, a 5xx answer) are tried anyway, in order: they cost the request nothing
and a recovery is noticed at once. One whose last failure was a timeout is not: the
request fails fast instead of waiting on a black hole (502 naming the next retry), or
429 with the earliest Retry-After when all are rate-limited. Cached content and stale
tags are still served meanwhile.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from email.utils import parsedate_to_datetime

from cachesvc.clock import SYSTEM_CLOCK, Clock
from cachesvc.errors import UpstreamRateLimited, UpstreamUnreachable
from cachesvc.metrics import Metrics

log = logging.getLogger("cachesvc.endpoints")

# An upstream's Retry-After is honoured up to this long (a day: beyond is a broken header).
MAX_RETRY_AFTER = 86400.0


def retry_after(value: str | None, now: float) -> float | None:
    """A ``Retry-After`` value as seconds from ``now`` (wall time: an HTTP date is another
    host's clock); delta-seconds or an HTTP date; None when absent or unparsable."""
    text = (value or "").strip()
    if not text:
        return None
    try:
        return max(0.0, float(text))
    except ValueError:
        pass
    try:
        return max(0.0, parsedate_to_datetime(text).timestamp() - now)
    except (TypeError, ValueError):
        return None


@dataclass(slots=True)
class _Health:
    failures: int = 0
    cooling_until: float = 0.0
    blocked_until: float = 0.0
    slow: bool = False  # the last failure was a timeout


class Endpoints:
    """Which of one registry's endpoints may be asked now."""

    def __init__(
        self,
        registry: str,
        urls: tuple[str, ...],
        *,
        cooldown: float,
        max_cooldown: float,
        metrics: Metrics,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        self.registry = registry
        self.urls = urls
        self._cooldown = cooldown
        self._max_cooldown = max_cooldown
        self._metrics = metrics
        self._clock = clock
        self._health = {url: _Health() for url in urls}
        for url in urls:
            metrics.endpoint_healthy.labels(registry, url).set(1)

    def available(self) -> list[int]:
        """Indexes of the endpoints to try, in order; raises when none may be asked now."""
        now = self._clock.monotonic()
        ready = [
            i
            for i, url in enumerate(self.urls)
            if self._health[url].cooling_until <= now and self._health[url].blocked_until <= now
        ]
        if ready:
            return ready
        fast = [
            i
            for i, url in enumerate(self.urls)
            if self._health[url].blocked_until <= now and not self._health[url].slow
        ]
        if fast:
            return fast
        waits = {
            url: max(h.cooling_until, h.blocked_until) - now for url, h in self._health.items()
        }
        soonest = min(waits.values())
        if all(h.blocked_until > now for h in self._health.values()):
            raise UpstreamRateLimited(
                f"{self.registry} rate-limited the mirror on every endpoint; "
                f"retry in {math.ceil(soonest)}s",
                retry_after=soonest,
            )
        raise UpstreamUnreachable(
            f"every endpoint of {self.registry} failed recently and is cooling down; "
            f"next retry in {math.ceil(soonest)}s"
        )

    def succeeded(self, url: str) -> None:
        """The endpoint answered (any status but 5xx/429): healthy again."""
        health = self._health[url]
        if health.failures or health.cooling_until:
            log.info("endpoint %s of %s is healthy again", url, self.registry)
        health.failures = 0
        health.cooling_until = 0.0
        health.slow = False
        if health.blocked_until <= self._clock.monotonic():
            self._metrics.endpoint_healthy.labels(self.registry, url).set(1)

    def failed(self, url: str, reason: str) -> None:
        """A connect error, timeout or 5xx: cool down (with backoff) before asking again."""
        health = self._health[url]
        now = self._clock.monotonic()
        self._metrics.endpoint_failures.labels(self.registry, url, reason).inc()
        health.slow = reason == "timeout"
        if health.cooling_until > now:
            return  # a request that was in flight alongside the one that tripped it
        health.failures += 1
        pause = self._backoff(health)
        health.cooling_until = now + pause
        self._metrics.endpoint_healthy.labels(self.registry, url).set(0)
        log.warning(
            "endpoint %s of %s failed (%s); skipping it for %.0fs",
            url, self.registry, reason, pause,
        )  # fmt: skip

    def rate_limited(self, url: str, header: str | None) -> float:
        """A 429 with this ``Retry-After`` header: not asked again before it (or the
        backoff without one); returns the pause."""
        health = self._health[url]
        now = self._clock.monotonic()
        self._metrics.endpoint_failures.labels(self.registry, url, "429").inc()
        wait = retry_after(header, self._clock.time())
        if wait is None:
            health.failures += 1
            pause = self._backoff(health)
        else:
            pause = min(MAX_RETRY_AFTER, wait)
        health.blocked_until = max(health.blocked_until, now + pause)
        self._metrics.endpoint_healthy.labels(self.registry, url).set(0)
        log.warning(
            "endpoint %s of %s rate-limited the mirror (429); not asking it for %.0fs",
            url, self.registry, pause,
        )  # fmt: skip
        return pause

    def _backoff(self, health: _Health) -> float:
        exponent = min(health.failures - 1, 30)
        return float(min(self._max_cooldown, self._cooldown * 2.0**exponent))
