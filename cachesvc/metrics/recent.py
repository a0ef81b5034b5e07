"""Recent upstream errors per endpoint, kept by the daemon itself."""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Iterator

from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

RECENT_WINDOW = 300.0  # seconds: what "recent" means for upstream errors (cachesvc status)
RECENT_LIMIT = 10_000  # error times remembered per endpoint (bounds memory in an outage)


class RecentErrors(Collector):
    """``cachesvc_upstream_recent_errors``: upstream errors per endpoint in the last 5 minutes.

    A counter since start says little about now (a daemon that failed for an hour last
    week looks as bad as one failing at this moment), and ``cachesvc status`` reads one
    scrape, not a ``rate()``; so the daemon keeps the recent error times itself.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._times: dict[tuple[str, str], deque[float]] = {}

    def record(self, registry: str, endpoint: str) -> None:
        """One 5xx or transport error of ``endpoint`` now."""
        key = (registry, endpoint)
        times = self._times.get(key)
        if times is None:
            times = self._times[key] = deque(maxlen=RECENT_LIMIT)
        times.append(self._clock())

    def count(self, registry: str, endpoint: str) -> int:
        """Errors of ``endpoint`` within the window."""
        times = self._times.get((registry, endpoint))
        if not times:
            return 0
        cutoff = self._clock() - RECENT_WINDOW
        while times and times[0] < cutoff:
            times.popleft()
        return len(times)

    def collect(self) -> Iterator[Metric]:
        family = GaugeMetricFamily(
            "cachesvc_upstream_recent_errors",
            f"Upstream 5xx and transport errors in the last {RECENT_WINDOW:.0f} seconds.",
            labels=["registry", "endpoint"],
        )
        for registry, endpoint in list(self._times):
            family.add_metric([registry, endpoint], self.count(registry, endpoint))
        yield family
