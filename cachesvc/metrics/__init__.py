"""Every Prometheus object cachesvc exports, registered on an injected registry.

Nothing is registered at import time: ``Metrics(CollectorRegistry())`` in a test
gets its own set. Names follow ``cachesvc_<thing>_<unit>``; labels are bounded
(configured registry names and endpoint URLs, fixed result words, status classes).

``Metrics`` is the one object every part receives. Its declarations are grouped by
the concept they measure, one module each, and ``Metrics`` composes the groups:

    mirror.py    requests, served bytes, fills            (MirrorMetrics)
    upstream.py  upstream traffic, endpoint health, limits (UpstreamMetrics)
    store.py     usage, capacity, eviction, storage faults (StoreMetrics)
    ops.py       prewarm jobs, the admin API, containerd  (OpsMetrics)
    policy.py    allow lists and signature verification   (PolicyMetrics)
    cluster.py   members and the peer API                 (ClusterMetrics)
    recent.py    recent upstream errors (a collector);  children.py  bound ``labels``
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from prometheus_client import CollectorRegistry, GCCollector, PlatformCollector, ProcessCollector

from cachesvc.metrics.children import CHILDREN_LIMIT, bound_children
from cachesvc.metrics.cluster import ClusterMetrics
from cachesvc.metrics.mirror import MirrorMetrics
from cachesvc.metrics.ops import OpsMetrics
from cachesvc.metrics.policy import PolicyMetrics
from cachesvc.metrics.recent import RECENT_LIMIT, RECENT_WINDOW, RecentErrors
from cachesvc.metrics.store import StoreMetrics
from cachesvc.metrics.upstream import UpstreamMetrics

__all__ = [
    "CHILDREN_LIMIT",
    "RECENT_LIMIT",
    "RECENT_WINDOW",
    "Metrics",
    "RecentErrors",
    "bound_children",
]


class Metrics(
    MirrorMetrics, UpstreamMetrics, StoreMetrics, OpsMetrics, PolicyMetrics, ClusterMetrics
):
    """The daemon's metrics; one instance per process (or per test)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        # Each group declares its metrics in its own __init__; they are independent (no
        # group reads another's), so they are called in turn rather than through super().
        MirrorMetrics.__init__(self, registry)
        UpstreamMetrics.__init__(self, registry)
        StoreMetrics.__init__(self, registry)
        OpsMetrics.__init__(self, registry)
        PolicyMetrics.__init__(self, registry)
        ClusterMetrics.__init__(self, registry)
        # What an SRE expects of any process (memory, CPU, open fds, GC), from the
        # library's standard collectors, on this registry: the global one stays untouched.
        ProcessCollector(registry=registry)
        GCCollector(registry=registry)
        PlatformCollector(registry=registry)

    def prime(self, endpoints: Mapping[str, Sequence[str]]) -> None:
        """Create, at 0, every labelled counter series an alerting rule uses, per registry.

        Prometheus' ``increase()`` cannot see the first increment of a series born at 1,
        so a first digest mismatch or endpoint failure would be silent. ``endpoints`` maps
        each configured registry to its endpoint URLs (the label values the clients use).
        """
        for name, urls in endpoints.items():
            self.digest_mismatches.labels(name)
            for code in PRIMED_AUTH_CODES:
                self.upstream_auth_failures.labels(name, code)
            for kind in PRIMED_KINDS:
                for result in PRIMED_RESULTS:
                    self.requests.labels(kind, result, name)
            for url in urls:
                for status_class in PRIMED_STATUS_CLASSES:
                    self.upstream_requests.labels(name, url, status_class)
                for reason in PRIMED_FAILURE_REASONS:
                    self.endpoint_failures.labels(name, url, reason)


# The label values ``Metrics.prime`` creates: those the mirror and the upstream clients use.
PRIMED_KINDS = ("manifest", "blob", "tags", "referrers")
PRIMED_RESULTS = ("hit", "miss", "coalesced", "stale", "error", "passthrough")
PRIMED_STATUS_CLASSES = ("2xx", "3xx", "4xx", "5xx", "error")
PRIMED_FAILURE_REASONS = ("connect", "timeout", "5xx", "429", "redirect")
PRIMED_AUTH_CODES = ("401", "403")
