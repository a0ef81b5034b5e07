"""Metrics of operator work: prewarm jobs, the admin API, containerd's wiring."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge


class OpsMetrics:
    """Part of ``Metrics``: what operators asked for and what the node's wiring looks like."""

    def __init__(self, registry: CollectorRegistry) -> None:
        """Prewarm jobs, images and bytes, admin requests, and whether containerd is wired."""
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
        self.containerd_wired = Gauge(
            "cachesvc_containerd_wired",
            "1 when this node's containerd hosts files exist for every configured registry and "
            "point at this listener; 0 otherwise, or when the check is off (containerd.config "
            "unset). /readyz says what is missing.",
            registry=registry,
        )
