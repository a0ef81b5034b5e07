"""Metrics of the mirror API and its fills: requests, bytes served, fill progress."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from cachesvc.metrics.buckets import FILL_BUCKETS
from cachesvc.metrics.children import bound_children


class MirrorMetrics:
    """Part of ``Metrics``: what clients asked and how fills served them."""

    def __init__(self, registry: CollectorRegistry) -> None:
        """Requests by kind and result, served bytes, fills in flight and their waiters."""
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
        self.fill_seconds = Histogram(
            "cachesvc_fill_duration_seconds",
            "Duration of blob fills from start to verified commit (or failure).",
            ["result"],
            buckets=FILL_BUCKETS,
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
        self.fill_waiters_per_fill = Histogram(
            "cachesvc_fill_waiters_per_fill",
            "Most client responses that streamed from one fill at once, observed when it ends.",
            buckets=(0, 1, 2, 4, 8, 16, 32, 64),
            registry=registry,
        )
        self.http_responses = Counter(
            "cachesvc_http_responses_total",
            "Responses of the mirror API by method and status code.",
            ["method", "code"],
            registry=registry,
        )
        self.shutdown_aborted = Counter(
            "cachesvc_shutdown_aborted_total",
            "Fills cancelled because they outlived the shutdown deadline.",
            registry=registry,
        )
        # The per-request counters of the mirror API, bound (see ``bound_children``).
        self.requests_by = bound_children(self.requests)
        self.served_bytes_by = bound_children(self.served_bytes)
        self.http_responses_by = bound_children(self.http_responses)
