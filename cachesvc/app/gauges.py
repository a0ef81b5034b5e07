"""Gauges read at scrape time from the objects that know the value."""

from __future__ import annotations

import shutil

from cachesvc.config import StorageConfig
from cachesvc.metrics import Metrics
from cachesvc.mirror.fills import FillManager
from cachesvc.store.store import Store


def watch_gauges(
    metrics: Metrics, storage: StorageConfig, store: Store, fills: FillManager
) -> None:
    """Usage, fills in flight, the filesystem and the store's health, read when scraped."""
    m = metrics
    m.cache_bytes.set_function(lambda: store.usage_bytes)
    m.cache_entries.set_function(lambda: store.usage_entries)
    m.fills_in_flight.set_function(lambda: len(fills.running()))
    m.fill_waiters.set_function(lambda: sum(f.followers for f in fills.running()))
    root = storage.root
    m.storage_free.set_function(lambda: shutil.disk_usage(root).free)
    m.storage_total.set_function(lambda: shutil.disk_usage(root).total)
    m.storage_ready.set_function(lambda: store.health.trouble() is None)
    _watch_disk_bounds(metrics, storage)


def _watch_disk_bounds(m: Metrics, storage: StorageConfig) -> None:
    """storage.max_size and storage.min_free in bytes (a percentage follows the
    filesystem's size, read at scrape time)."""
    root = storage.root
    m.cache_capacity.set_function(lambda: storage.size_limit(shutil.disk_usage(root).total) or 0)
    share = storage.min_free
    m.storage_min_free.set_function(
        lambda: share.of(shutil.disk_usage(root).total) if share is not None else 0
    )
