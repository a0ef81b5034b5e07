"""Metrics of cluster mode; all zero on a daemon without ``cluster:``."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge

from cachesvc.metrics.children import bound_children


class ClusterMetrics:
    """Part of ``Metrics``: members, the peer API, and upstream fetches peers saved."""

    def __init__(self, registry: CollectorRegistry) -> None:
        """Cluster mode (issue 13): members, peer requests and bytes, blocked peers."""
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
