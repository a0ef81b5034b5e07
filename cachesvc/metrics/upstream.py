"""Metrics of upstream access: traffic, endpoint health, limits, credentials, stale answers."""

from __future__ import annotations

import time

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from cachesvc.metrics.buckets import LATENCY_BUCKETS
from cachesvc.metrics.recent import RecentErrors


class UpstreamMetrics:
    """Part of ``Metrics``: what the registries were asked and how they answered."""

    def __init__(self, registry: CollectorRegistry) -> None:
        """Requests sent upstream, their latency and bytes, token fetches, last answers."""
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
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.upstream_bytes = Counter(
            "cachesvc_upstream_bytes_total",
            "Blob bytes received from upstream by fills.",
            ["registry"],
            registry=registry,
        )
        self.token_fetches = Counter(
            "cachesvc_token_fetches_total",
            "Bearer token requests to registry token services, by result (ok, error).",
            ["registry", "result"],
            registry=registry,
        )
        self.upstream_last_success = Gauge(
            "cachesvc_upstream_last_success_timestamp_seconds",
            "Unix time of the last upstream answer that was not a 5xx or transport error.",
            ["registry", "endpoint"],
            registry=registry,
        )
        self.upstream_last_error = Gauge(
            "cachesvc_upstream_last_error_timestamp_seconds",
            "Unix time of the last upstream 5xx or transport error.",
            ["registry", "endpoint"],
            registry=registry,
        )
        self.recent_errors = RecentErrors()
        registry.register(self.recent_errors)
        self._register_endpoint_health(registry)
        self._register_upstream_answers(registry)

    def _register_endpoint_health(self, registry: CollectorRegistry) -> None:
        """Endpoint health (cool-down), rate-limit headers, cachesvc's own limiter."""
        self.endpoint_healthy = Gauge(
            "cachesvc_upstream_endpoint_healthy",
            "1 while an endpoint may be asked, 0 from a failure (cool-down) or a 429 until its "
            "next success.",
            ["registry", "endpoint"],
            registry=registry,
        )
        self.endpoint_failures = Counter(
            "cachesvc_upstream_endpoint_failures_total",
            "Endpoint failures that count against its health, by reason (connect, timeout, "
            "5xx, 429, redirect).",
            ["registry", "endpoint", "reason"],
            registry=registry,
        )
        self.ratelimit_remaining = Gauge(
            "cachesvc_upstream_ratelimit_remaining",
            "Last ratelimit-remaining header an endpoint sent (Docker Hub: pulls left in "
            "its window).",
            ["registry", "endpoint"],
            registry=registry,
        )
        self.ratelimit_limit = Gauge(
            "cachesvc_upstream_ratelimit_limit",
            "Last ratelimit-limit header an endpoint sent.",
            ["registry", "endpoint"],
            registry=registry,
        )
        self.limiter_queue = Gauge(
            "cachesvc_upstream_limiter_queue_requests",
            "Requests waiting for cachesvc's own per-registry limiter.",
            ["registry"],
            registry=registry,
        )
        self.limiter_rejections = Counter(
            "cachesvc_upstream_limiter_rejections_total",
            "Requests refused by cachesvc's own limiter with 429, by reason (queue_full, "
            "queue_timeout, rate).",
            ["registry", "reason"],
            registry=registry,
        )

    def _register_upstream_answers(self, registry: CollectorRegistry) -> None:
        """Refused credentials, their reloads, and tag lookups answered without upstream."""
        self.upstream_auth_failures = Counter(
            "cachesvc_upstream_auth_failures_total",
            "Upstream refusals of the mirror's own credentials, by the registry or its token "
            "service (401 after the challenge, or 403; a 401 challenge cachesvc has no "
            "credentials for counts as 401), by status code.",
            ["registry", "code"],
            registry=registry,
        )
        self.stale_served = Counter(
            "cachesvc_stale_served_total",
            "Tag lookups answered from the last known digest because upstream failed.",
            ["registry"],
            registry=registry,
        )
        self.negative_hits = Counter(
            "cachesvc_negative_cache_hits_total",
            "Tag lookups answered 404 from the negative cache without asking upstream.",
            ["registry"],
            registry=registry,
        )
        self.credential_reloads = Counter(
            "cachesvc_credentials_reloads_total",
            "Loads of the credentials file by result (ok, error: the last good ones stay).",
            ["result"],
            registry=registry,
        )

    def upstream_answered(self, registry: str, endpoint: str, status_class: str) -> None:
        """Count one upstream answer (``2xx``..``5xx``, ``error`` for a transport failure)."""
        self.upstream_requests.labels(registry, endpoint, status_class).inc()
        now = time.time()
        if status_class in ("5xx", "error"):
            self.upstream_last_error.labels(registry, endpoint).set(now)
            self.recent_errors.record(registry, endpoint)
        else:
            self.upstream_last_success.labels(registry, endpoint).set(now)
