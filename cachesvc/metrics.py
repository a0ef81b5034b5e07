"""Every Prometheus object cachesvc exports, registered on an injected registry.

Nothing is registered at import time: ``Metrics(CollectorRegistry())`` in a test
gets its own set. Names follow ``cachesvc_<thing>_<unit>``; labels are bounded
(configured registry names and endpoint URLs, fixed result words, status classes).
"""

from __future__ import annotations

import functools
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import TypeVar

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    GCCollector,
    Histogram,
    PlatformCollector,
    ProcessCollector,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.metrics import MetricWrapperBase
from prometheus_client.registry import Collector

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
_FILL_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)
RECENT_WINDOW = 300.0  # seconds: what "recent" means for upstream errors (cachesvc status)
RECENT_LIMIT = 10_000  # error times remembered per endpoint (bounds memory in an outage)
# Bound children remembered per metric (label sets are bounded; this bounds the memo).
CHILDREN_LIMIT = 1024

_M = TypeVar("_M", bound=MetricWrapperBase)


def bound_children(metric: _M) -> Callable[..., _M]:
    """``metric.labels`` remembered per label-value tuple (least recently used go first).

    ``labels()`` validates, converts and locks on every call: three of those were a
    few percent of a manifest hit at thousands of requests per second. Forgetting a
    child only costs the next lookup (prometheus keeps it).
    """
    return functools.lru_cache(maxsize=CHILDREN_LIMIT)(metric.labels)


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
        # -- issue 4: the operator and SRE surface -------------------------------------
        self.fill_waiters_per_fill = Histogram(
            "cachesvc_fill_waiters_per_fill",
            "Most client responses that streamed from one fill at once, observed when it ends.",
            buckets=(0, 1, 2, 4, 8, 16, 32, 64),
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
        self.cache_bytes = Gauge(
            "cachesvc_cache_size_bytes",
            "Bytes of verified blobs and manifests in the store.",
            registry=registry,
        )
        self.cache_entries = Gauge(
            "cachesvc_cache_entries",
            "Verified blobs and manifests in the store.",
            registry=registry,
        )
        self.cache_capacity = Gauge(
            "cachesvc_cache_capacity_bytes",
            "storage.max_size: the size eviction keeps the store under (0: unbounded).",
            registry=registry,
        )
        self.storage_free = Gauge(
            "cachesvc_storage_free_bytes",
            "Free bytes on the filesystem holding storage.root.",
            registry=registry,
        )
        self.storage_total = Gauge(
            "cachesvc_storage_filesystem_size_bytes",
            "Size of the filesystem holding storage.root.",
            registry=registry,
        )
        self.evictions = Counter(
            "cachesvc_evictions_total",
            "Blobs removed from the store, by reason (size, age, purge).",
            ["reason"],
            registry=registry,
        )
        self.evicted_bytes = Counter(
            "cachesvc_evicted_bytes_total",
            "Bytes removed from the store, by reason (size, age, purge).",
            ["reason"],
            registry=registry,
        )
        self.eviction_skipped = Counter(
            "cachesvc_eviction_skipped_total",
            "Eviction candidates kept because they were pinned or in use (reason).",
            ["reason"],
            registry=registry,
        )
        self.pinned_images = Gauge(
            "cachesvc_pinned_images",
            "Images pinned (exempt from eviction).",
            registry=registry,
        )
        self.pinned_bytes = Gauge(
            "cachesvc_pinned_bytes",
            "Bytes of stored blobs that pinned images hold.",
            registry=registry,
        )
        self.prewarm_jobs = Counter(
            "cachesvc_prewarm_jobs_total",
            "Finished prewarm jobs by result (done, failed, cancelled).",
            ["result"],
            registry=registry,
        )
        self.prewarm_images = Counter(
            "cachesvc_prewarm_images_total",
            "Images prewarm jobs finished, by result (done, failed).",
            ["result"],
            registry=registry,
        )
        self.prewarm_bytes = Counter(
            "cachesvc_prewarm_bytes_total",
            "Blob bytes prewarm jobs made available, by how (fetched, cached: already there).",
            ["source"],
            registry=registry,
        )
        self.prewarm_jobs_running = Gauge(
            "cachesvc_prewarm_jobs_running",
            "Prewarm jobs queued or running.",
            registry=registry,
        )
        self.admin_requests = Counter(
            "cachesvc_admin_requests_total",
            "Requests to /admin/v1 by result (ok, unauthorized, disabled, error).",
            ["result"],
            registry=registry,
        )
        self.shutdown_aborted = Counter(
            "cachesvc_shutdown_aborted_total",
            "Fills cancelled because they outlived the shutdown deadline.",
            registry=registry,
        )
        self.http_responses = Counter(
            "cachesvc_http_responses_total",
            "Responses of the mirror API by method and status code.",
            ["method", "code"],
            registry=registry,
        )
        self._upstream_access(registry)
        self.recent_errors = RecentErrors()
        registry.register(self.recent_errors)
        # What an SRE expects of any process (memory, CPU, open fds, GC), from the
        # library's standard collectors, on this registry: the global one stays untouched.
        ProcessCollector(registry=registry)
        GCCollector(registry=registry)
        PlatformCollector(registry=registry)
        self._deployment(registry)
        self._storage_faults(registry)
        self._policy(registry)
        # The per-request counters of the mirror API, bound (see ``bound_children``).
        self._cluster(registry)
        self.requests_by = bound_children(self.requests)
        self.served_bytes_by = bound_children(self.served_bytes)
        self.http_responses_by = bound_children(self.http_responses)
        self.policy_decisions_by = bound_children(self.policy_decisions)

    def _policy(self, registry: CollectorRegistry) -> None:
        """Policy at the node: allow lists, signature verification, client networks."""
        self.policy_decisions = Counter(
            "cachesvc_policy_decisions_total",
            "Policy decisions by registry and result: allowed / denied_allow (the allow list), "
            "verified (a fresh verification), cached (a remembered verified verdict), warned "
            "(refused but served: verify mode warn), denied_<reason> (no_signature, "
            "unknown_key, bad_signature, wrong_digest).",
            ["registry", "result"],
            registry=registry,
        )
        self.policy_client_refusals = Counter(
            "cachesvc_policy_client_refusals_total",
            "Mirror API requests refused because the client is outside clients.allow.",
            registry=registry,
        )
        self.verify_seconds = Histogram(
            "cachesvc_policy_verify_seconds",
            "Time to verify one digest that had no cached verdict (fetching the signature "
            "artifacts upstream and checking them).",
            ["registry"],
            buckets=_LATENCY_BUCKETS,
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

    def _upstream_access(self, registry: CollectorRegistry) -> None:
        """Upstream access: credentials, endpoint health, limits, stale and negative answers."""
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
        self.upstream_auth_failures = Counter(
            "cachesvc_upstream_auth_failures_total",
            "Upstream refusals of the mirror's own credentials, by the registry or its token "
            "service (401 after the challenge, or 403; a 401 challenge cachesvc has no "
            "credentials for counts as 401), by status code.",
            ["registry", "code"],
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

    def _cluster(self, registry: CollectorRegistry) -> None:
        """Cluster mode (issue 13); all zero on a daemon without ``cluster:``."""
        self.cluster_members = Gauge(
            "cachesvc_cluster_members",
            "Members of the cluster as this daemon sees them (itself included).",
            registry=registry,
        )
        self.peer_requests = Counter(
            "cachesvc_peer_requests_total",
            "Requests served on the peer API by result (hit: from disk, fill: from a fill "
            "in progress or started, redirected: fan-out full, error, unauthorized).",
            ["result"],
            registry=registry,
        )
        self.peer_bytes_received = Counter(
            "cachesvc_peer_received_bytes_total",
            "Blob bytes fills received from other members.",
            registry=registry,
        )
        self.peer_bytes_sent = Counter(
            "cachesvc_peer_sent_bytes_total",
            "Body bytes sent to other members on the peer API.",
            registry=registry,
        )
        self.upstream_avoided = Counter(
            "cachesvc_upstream_fetches_avoided_total",
            "Blob fills and manifest fetches completed from peers without asking upstream.",
            registry=registry,
        )
        self.peers_blocked = Counter(
            "cachesvc_peers_blocked_total",
            "Peers blocked for cluster.block_for after they sent bytes that did not match.",
            registry=registry,
        )
        self.peer_streams_peak = Gauge(
            "cachesvc_peer_streams_peak",
            "The most peers streaming one blob from this daemon at once since start "
            "(at most cluster.fanout).",
            registry=registry,
        )
        self.peer_requests_by = bound_children(self.peer_requests)

    def _deployment(self, registry: CollectorRegistry) -> None:
        """What the deployment's alerts need: the disk floor and containerd's wiring."""
        self.storage_min_free = Gauge(
            "cachesvc_storage_min_free_bytes",
            "storage.min_free in bytes: the free space eviction keeps on the filesystem of "
            "storage.root (0: unset).",
            registry=registry,
        )
        self.containerd_wired = Gauge(
            "cachesvc_containerd_wired",
            "1 when this node's containerd hosts files exist for every configured registry and "
            "point at this listener; 0 otherwise, or when the check is off (containerd.config "
            "unset). /readyz says what is missing.",
            registry=registry,
        )

    def _storage_faults(self, registry: CollectorRegistry) -> None:
        """Issue 11's storage faults: damage found in the store, storage errors, pins."""
        self.store_damaged = Counter(
            "cachesvc_store_damaged_total",
            "Stored files removed because their bytes did not match their digest (mismatch) "
            "or could not be read (read_error), by who found it (serve, scrub, verify).",
            ["reason", "found_by"],
            registry=registry,
        )
        self.storage_errors = Counter(
            "cachesvc_storage_errors_total",
            "Storage errors met on the request path (a full disk, EIO), by operation "
            "(read, write); the request got a clear error or its bytes without caching.",
            ["op"],
            registry=registry,
        )
        self.storage_ready = Gauge(
            "cachesvc_storage_ready",
            "1 while the store takes writes and reads (what /readyz checks), 0 on trouble.",
            registry=registry,
        )
        self.scrubbed_bytes = Counter(
            "cachesvc_scrub_bytes_total",
            "Bytes of stored files the background scrub hashed.",
            registry=registry,
        )
        self.pinned_incomplete = Gauge(
            "cachesvc_pinned_incomplete_images",
            "Pinned images missing blobs (a prewarm that did not finish): prewarm them again.",
            registry=registry,
        )

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
