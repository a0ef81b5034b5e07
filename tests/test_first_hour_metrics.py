"""Process and Python GC metrics on a real daemon's /metrics, from the injected registry."""

from __future__ import annotations

from pathlib import Path

import prometheus_client
from prometheus_client import CollectorRegistry, generate_latest

from cachesvc.metrics import Metrics
from tests.peers.ports import refused_url
from tests.peers_fixtures import CachesvcProcess


def test_a_running_daemon_exports_process_and_gc_metrics(tmp_path: Path) -> None:
    with CachesvcProcess(tmp_path / "cachesvc", {"fake.test": [refused_url()]}) as proc:
        assert proc.metric("process_resident_memory_bytes") > 1024 * 1024
        assert proc.metric("process_open_fds") >= 3  # stdio at least
        assert proc.metric("process_cpu_seconds_total") > 0
        assert proc.metric("process_start_time_seconds") > 0
        assert proc.metric("python_gc_collections_total", generation="0") >= 0
        assert "python_gc_objects_collected_total{" in proc.metrics_text()


def test_the_standard_collectors_go_on_the_injected_registry_only() -> None:
    before = set(prometheus_client.REGISTRY._names_to_collectors)
    first, second = CollectorRegistry(), CollectorRegistry()
    Metrics(first)
    Metrics(second)  # a second daemon (or test) in one process: no duplicate registration
    assert set(prometheus_client.REGISTRY._names_to_collectors) == before
    for registry in (first, second):
        text = generate_latest(registry).decode()
        assert "\nprocess_open_fds " in text
        assert "python_gc_collections_total{" in text
