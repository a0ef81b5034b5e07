"""Every Prometheus object cachesvc exports, registered on an injected registry.

Nothing is registered at import time: ``Metrics(CollectorRegistry())`` in a test
gets its own set. Names follow ``cachesvc_<thing>_<unit>``; labels are bounded
(configured registry names and endpoint URLs, fixed result words, status classes).
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
_FILL_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)


class Metrics:
    """The daemon's metrics; one instance per process (or per test)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.requests = Counter(
            "cachesvc_requests_total",
            "Mirror requests by kind (manifest, blob, tags, referrers) and cache result "
            "(hit, miss, coalesced, stale, error, passthrough).",
            ["kind", "result", "registry"],
            registry=registry,
        )
        self.served_bytes = Counter(
            "cachesvc_served_bytes_total",
            "Body bytes sent to clients, by where they came from (cache or a fill from upstream).",
            ["source"],
            registry=registry,
        )
        self.upstream_requests = Counter(
            "cachesvc_upstream_requests_total",
            "Requests sent upstream by registry, endpoint and status class (2xx, 3xx, 4xx, "
            "5xx, or error for a transport failure).",
            ["registry", "endpoint", "status_class"],
            registry=registry,
        )
        self.upstream_seconds = Histogram(
            "cachesvc_upstream_request_seconds",
            "Time from sending an upstream request to its response headers.",
            ["registry"],
            buckets=_LATENCY_BUCKETS,
            registry=registry,
        )
        self.upstream_bytes = Counter(
            "cachesvc_upstream_bytes_total",
            "Blob bytes received from upstream by fills.",
            ["registry"],
            registry=registry,
        )
        self.fill_seconds = Histogram(
            "cachesvc_fill_duration_seconds",
            "Duration of blob fills from start to verified commit (or failure).",
            ["result"],
            buckets=_FILL_BUCKETS,
            registry=registry,
        )
        self.fills_in_flight = Gauge(
            "cachesvc_fills_in_flight",
            "Blob fills currently running.",
            registry=registry,
        )
        self.fill_waiters = Gauge(
            "cachesvc_fill_waiters",
            "Client responses currently streaming from fills in progress.",
            registry=registry,
        )
        self.digest_mismatches = Counter(
            "cachesvc_digest_mismatches_total",
            "Upstream bodies whose digest did not match; nothing was kept or served whole.",
            ["registry"],
            registry=registry,
        )
        self.token_fetches = Counter(
            "cachesvc_token_fetches_total",
            "Bearer token requests to registry token services, by result (ok, error).",
            ["registry", "result"],
            registry=registry,
        )
        self.http_responses = Counter(
            "cachesvc_http_responses_total",
            "Responses of the mirror API by method and status code.",
            ["method", "code"],
            registry=registry,
        )
