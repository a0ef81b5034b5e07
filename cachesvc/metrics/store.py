"""Metrics of the node's store: usage, capacity, eviction, pins, storage faults."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge


class StoreMetrics:
    """Part of ``Metrics``: what the disk holds, what left it, and trouble with it."""

    def __init__(self, registry: CollectorRegistry) -> None:
        """Usage against capacity and the disk floor, eviction, pinned images."""
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
        self.storage_min_free = Gauge(
            "cachesvc_storage_min_free_bytes",
            "storage.min_free in bytes: the free space eviction keeps on the filesystem of "
            "storage.root (0: unset).",
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
        self._register_storage_faults(registry)

    def _register_storage_faults(self, registry: CollectorRegistry) -> None:
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
