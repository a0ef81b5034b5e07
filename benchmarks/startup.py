"""Store scale: cachesvc start-up time and hit latency with 1k, 10k and 100k stored blobs.

Each storage root is filled by writing blob files where ``cachesvc.store.Store.path`` puts them
(the store owns the layout), with the store closed again before cachesvc starts on it. Opening
the ``Store`` leaves its empty index behind, as a node restarting on its own store would have.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from benchmarks.lab import Lab
from benchmarks.load import median_latency_ms
from benchmarks.measurement import CACHESVC, Row, Target, median, ratio
from benchmarks.ports import LOOPBACK
from benchmarks.systems import (
    Service,
    cachesvc_ready_url,
    spawn_cachesvc,
    write_cachesvc_config,
)
from cachesvc.oci import Digest
from cachesvc.store.store import Store

STARTUP_LIMIT_SECONDS = 2.0
LATENCY_FLAT_FACTOR = 1.5
BLOB_BYTES = 512
STORE_REPOSITORY = "bench/store"


def populate(root: Path, count: int) -> str:
    """Write ``count`` distinct small blobs into the store at ``root``; return one digest."""
    salt = os.urandom(16)
    store = Store(root)
    try:
        made: set[Path] = set()
        digest: Digest | None = None
        for n in range(count):
            data = salt + n.to_bytes(8, "big") + bytes(BLOB_BYTES - 24)
            digest = Digest.of(data)
            path = store.path(digest)
            if path.parent not in made:
                path.parent.mkdir(parents=True, exist_ok=True)
                made.add(path.parent)
            path.write_bytes(data)
    finally:
        store.close()
    if digest is None:
        raise ValueError("a store of 0 blobs has no blob to ask for")
    return str(digest)


async def store_scale(lab: Lab, reps: int) -> list[Row]:
    """Start cachesvc on pre-filled storage roots of growing size; time readiness and hits.

    Each root is filled once; the starts are repeated ``reps`` times, sizes interleaved.
    """
    sizes = lab.plan.store_sizes
    largest = max(sizes)
    startup_samples: dict[int, list[float]] = {count: [] for count in sizes}
    latency_samples: dict[int, list[float]] = {count: [] for count in sizes}
    failures: list[str] = []
    note = "page cache warm (the files were just written)"
    if lab.cachesvc is None:
        note = f"cachesvc unavailable: {lab.cachesvc_reason}"
    else:
        roots = {count: lab.workdir / f"store-{count}" for count in sizes}
        digests = {count: populate(root, count) for count, root in roots.items()}
        for rep in range(reps):
            for count in sizes:
                try:
                    seconds, hit_ms = await _measure(lab, count, rep, roots[count], digests[count])
                except Exception as exc:  # one size failing must not end the run
                    failures.append(f"{count} blobs: {type(exc).__name__}: {exc}"[:500])
                    continue
                startup_samples[count].append(seconds)
                latency_samples[count].append(hit_ms)
    startup = {count: median(startup_samples[count]) for count in sizes}
    latency = {count: median(latency_samples[count]) for count in sizes}
    rows = []
    for count in sizes:
        targets = []
        if count == largest:
            targets.append(
                Target(
                    f"< {STARTUP_LIMIT_SECONDS:.0f} s", startup[count], "<", STARTUP_LIMIT_SECONDS
                )
            )
        rows.append(
            Row(
                f"store with {count:,} blobs",
                "start-up time",
                "s",
                {CACHESVC: startup[count]},
                targets,
                note,
            )
        )
    for count in sizes:
        targets = []
        if count == largest:
            targets.append(
                Target(
                    f"flat: <= {LATENCY_FLAT_FACTOR} x the {min(sizes):,}-blob latency",
                    ratio(latency[count], latency[min(sizes)]),
                    "<=",
                    LATENCY_FLAT_FACTOR,
                )
            )
        rows.append(
            Row(
                f"store with {count:,} blobs",
                "hit latency (median, 1 connection)",
                "ms",
                {CACHESVC: latency[count]},
                targets,
                note,
                failures,
            )
        )
    return rows


async def _measure(lab: Lab, count: int, rep: int, root: Path, digest: str) -> tuple[float, float]:
    name = f"cachesvc-store-{count}-{rep}"
    config, port, admin_port = write_cachesvc_config(lab.workdir, name, root, lab.upstream)
    started = time.perf_counter()
    service = Service(name, f"{LOOPBACK}:{port}", spawn_cachesvc(lab.workdir, name, config))
    try:
        service.child.wait_http(cachesvc_ready_url(admin_port), timeout=120.0)
        seconds = time.perf_counter() - started
        url = lab.blob_url(service, STORE_REPOSITORY, digest)
        latency = await median_latency_ms(lab.session, url, lab.plan.latency_samples)
    finally:
        service.stop()
    return seconds, latency
