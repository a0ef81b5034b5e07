"""The scenarios of issue 5, each measured for every system in the same run.

Every scenario repeats its measurement ``reps`` times, interleaving the systems (A B C A B C ...),
and reports medians. A system that fails a measurement is reported as missing, with the error
in the notes, rather than stopping the run.

Where the event loop matters (warm, cold, herd, manifests, memory) cachesvc runs twice side by
side: ``cachesvc`` (the default asyncio loop) and ``cachesvc-uvloop``. The targets are judged on
``cachesvc`` only; the containerd scenario measures ``cachesvc`` and the baseline only.
"""

from __future__ import annotations

import os
import tempfile
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

from benchmarks.containerd import Containerd, containerd_unavailable_reason
from benchmarks.content import MANIFEST_ACCEPT
from benchmarks.cpu import IDLE_LIMIT_SECONDS, cpu_seconds, until_idle
from benchmarks.lab import BIG_REPOSITORY, COLD_REPOSITORY, IMAGE_TAG, Lab
from benchmarks.load import download, download_together, request_rate
from benchmarks.measurement import (
    BASELINE,
    CACHESVC,
    CACHESVC_SYSTEMS,
    MIB,
    Comparison,
    Row,
    Target,
    median,
    ratio,
)
from benchmarks.memory import peak_rss_mib, reset_peak_rss
from benchmarks.systems import Service

RATE_MULTIPLE = 10
# Issue 10 raised the bars of the two hit paths it rewrote (issue 5's were 0.8 x nginx, 10 x).
WARM_NGINX_FACTOR = 0.9
DIGEST_RATE_MULTIPLE = 15
DIGEST_P99_LIMIT_MS = 5.0
RSS_LIMIT_MIB = 150.0
RSS_FLAT_FACTOR = 1.25


@dataclass(slots=True)
class Samples:
    """Per-system samples of one quantity, plus the failures met while taking them."""

    values: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    failures: list[str] = field(default_factory=list)
    remarks: list[str] = field(default_factory=list)

    async def take(self, system: str, measure: Callable[[], Awaitable[float]]) -> None:
        """Run one measurement; a failure is recorded, not raised."""
        value = await self.check(system, measure)
        if value is not None:
            self.values[system].append(value)

    async def check(self, system: str, action: Callable[[], Awaitable[float]]) -> float | None:
        """Run a step that is not a sample (a warm-up); record a failure, return the value."""
        try:
            return await action()
        except Exception as exc:  # one system's failure must not end the run
            self.failures.append(f"{system}: {type(exc).__name__}: {exc}"[:500])
            return None

    def medians(self) -> dict[str, float | None]:
        """The median per system."""
        return {system: median(samples) for system, samples in self.values.items()}


def _note(lab: Lab, *extra: str) -> str:
    unavailable = f"cachesvc unavailable: {lab.cachesvc_reason}" if lab.cachesvc is None else ""
    return "; ".join(filter(None, [unavailable, *extra]))


def _target(
    values: dict[str, float | None], op: Comparison, factor: float, of: str, what: str = ""
) -> Target:
    """cachesvc's median relative to system ``of``'s, e.g. ``>= 0.8 x nginx``."""
    label = f"{op} {factor} x {what or of}"
    return Target(label, ratio(values.get(CACHESVC), values.get(of)), op, factor)


def _throughput_row(
    scenario: str, values: dict[str, float | None], ceiling: Target, note: str, samples: Samples
) -> Row:
    """A MiB/s row: cachesvc at least the baseline, and near ``ceiling``."""
    targets = [_target(values, ">=", 1.0, BASELINE), ceiling]
    return Row(scenario, "throughput", "MiB/s", values, targets, note, _failures(samples))


def _failures(*samples: Samples) -> list[str]:
    return [failure for s in samples for failure in s.failures]


async def warm_blob(lab: Lab, reps: int) -> list[Row]:
    """One client downloads an already-cached blob; nginx serves the same file from disk.

    Also the CPU each hit costs the cache's process (both caches send it with
    ``sendfile``: the kernel's copy dominates).
    """
    blob = lab.big.layers[0]
    caches = {s.name: s for s in lab.caches}
    urls = {name: lab.blob_url(s, BIG_REPOSITORY, blob.digest) for name, s in caches.items()}
    urls["nginx"] = lab.nginx_url(blob)
    samples, cpu = Samples(), Samples()
    for name, url in urls.items():
        await samples.check(name, partial(_mib_per_second, url, blob.size))
    # The warm-ups filled the caches: let their write-back (and the distribution proxy's
    # second fetch for its own store) finish before anything is timed.
    os.sync()
    if not await until_idle((lab.upstream.child.pid, *(s.child.pid for s in lab.caches))):
        samples.remarks.append(f"still busy {IDLE_LIMIT_SECONDS:.0f} s after the warm-ups")
    for _ in range(reps):
        for name, url in urls.items():
            service = caches.get(name)
            measure = (
                partial(_mib_per_second, url, blob.size)
                if service is None
                else partial(_warm_transfer, service, url, blob.size, cpu)
            )
            await samples.take(name, measure)
    values = samples.medians()
    scenario = f"warm blob {_size(blob.size)}, 1 client"
    return [
        _throughput_row(
            scenario,
            values,
            _target(values, ">=", WARM_NGINX_FACTOR, "nginx"),
            _note(lab, *samples.remarks),
            samples,
        ),
        Row(scenario, "CPU per hit, cache process", "s", cpu.medians()),
    ]


async def _warm_transfer(service: Service, url: str, size: int, cpu: Samples) -> float:
    """One hit (MiB/s); the cache process's CPU for it is recorded when it succeeded."""
    before = cpu_seconds(service.child.pid)
    mib_per_second = await _mib_per_second(url, size)
    cpu.values[service.name].append(cpu_seconds(service.child.pid) - before)
    return mib_per_second


async def cold_blob(lab: Lab, reps: int) -> list[Row]:
    """One client downloads a blob no cache has seen (a fresh blob per system and repetition).

    Also the CPU each transfer cost: the cache's process, and every process taking part (the
    upstream registry, the cache, this harness as the client). On a machine this small the
    three share the cores, so ``size / (all CPU / cores)`` bounds any cache's cold throughput.
    """
    size = lab.plan.blob_size
    samples, cache_cpu, all_cpu, after = Samples(), Samples(), Samples(), Samples()
    samples.values["sha256"] = list(lab.sha256_samples)
    for _ in range(reps):
        for service in lab.caches:
            blob = await lab.cold_blob(size)
            url = lab.blob_url(service, COLD_REPOSITORY, blob.digest)
            os.sync()  # write-back of earlier blobs must not compete with this transfer
            await samples.take(
                service.name,
                partial(_cold_transfer, lab, service, url, size, (cache_cpu, all_cpu, after)),
            )
    values = samples.medians()
    ceiling = _target(values, ">=", 0.8, "sha256", "sha256 ceiling")
    note = _note(lab, "sha256: hashlib, one core, idle machine, before the lab")
    scenario = f"cold blob {_size(size)}, 1 client"
    cores = os.cpu_count() or 1
    all_medians = all_cpu.medians()
    bound = {
        name: size / MIB / (spent / cores) if spent else None for name, spent in all_medians.items()
    }
    cpu_note = f"upstream + cache + client processes; bound = size / (CPU / {cores} cores)"
    return [
        _throughput_row(scenario, values, ceiling, note, samples),
        Row(scenario, "CPU per transfer, cache process", "s", cache_cpu.medians()),
        Row(scenario, "CPU per transfer, all processes", "s", all_medians, note=cpu_note),
        Row(scenario, "throughput bound by that CPU", "MiB/s", bound, note=cpu_note),
        Row(
            scenario,
            "CPU after the last byte, cache + upstream",
            "s",
            after.medians(),
            note="; ".join(
                [
                    "until both are idle: a cache's fsync and commit; the distribution proxy "
                    "fetches the blob a second time for its own store",
                    *after.remarks,
                ]
            ),
        ),
    ]


async def _cold_transfer(
    lab: Lab, service: Service, url: str, size: int, cpu: tuple[Samples, Samples, Samples]
) -> float:
    """One cold download (MiB/s); its CPU is recorded only when the transfer succeeded.

    Cache and upstream CPU from /proc, the client's as this process's own CPU time (the
    download thread included), until the client has the last byte; then what cache and
    upstream still spend until both are idle, which also keeps that work out of the next
    transfer. A process gone in between fails the sample like the transfer.
    """
    cache_cpu, all_cpu, after = cpu
    cache_pid, upstream_pid = service.child.pid, lab.upstream.child.pid
    cache_before, upstream_before = cpu_seconds(cache_pid), cpu_seconds(upstream_pid)
    client_before = time.process_time()
    mib_per_second = await _mib_per_second(url, size)
    client = time.process_time() - client_before
    cache_end, upstream_end = cpu_seconds(cache_pid), cpu_seconds(upstream_pid)
    cache, upstream = cache_end - cache_before, upstream_end - upstream_before
    cache_cpu.values[service.name].append(cache)
    all_cpu.values[service.name].append(cache + upstream + client)
    if await until_idle((cache_pid, upstream_pid)):
        spent = cpu_seconds(cache_pid) - cache_end + cpu_seconds(upstream_pid) - upstream_end
        after.values[service.name].append(max(0.0, round(spent, 3)))
    else:
        after.remarks.append(
            f"{service.name}: still busy {IDLE_LIMIT_SECONDS:.0f} s after the transfer"
        )
    return mib_per_second


async def thundering_herd(lab: Lab, reps: int) -> list[Row]:
    """``clients`` clients start the same cold blob together; count upstream GETs, time all."""
    size, clients = lab.plan.blob_size, lab.plan.clients
    gets, wall = Samples(), Samples()
    for _ in range(reps):
        for service in lab.caches:
            blob = await lab.cold_blob(size)
            url = lab.blob_url(service, COLD_REPOSITORY, blob.digest)
            path = f"/v2/{COLD_REPOSITORY}/blobs/{blob.digest}"
            os.sync()
            await wall.take(service.name, partial(download_together, [url] * clients, size))
            await gets.take(service.name, partial(lab.upstream_gets, path))
    scenario = f"{clients} clients, same cold blob {_size(size)}"
    get_values, wall_values = gets.medians(), wall.medians()
    return [
        Row(
            scenario,
            "upstream GETs",
            "count",
            get_values,
            [Target("exactly 1", get_values.get(CACHESVC), "==", 1.0)],
            _note(lab),
            failures=_failures(gets),
        ),
        Row(
            scenario,
            "wall time, all clients",
            "s",
            wall_values,
            [_target(wall_values, "<=", 0.6, BASELINE)],
            _note(lab),
            failures=_failures(wall),
        ),
    ]


async def manifest_rates(lab: Lab, reps: int) -> list[Row]:
    """``connections`` keep-alive connections ask for a manifest by digest, then by tag.

    By digest: the small image's manifest. By tag: the multi-arch index, which is what
    a tag of most public images resolves to (containerd asks for it first).
    """
    plan = lab.plan
    rows: list[Row] = []
    headers = {"Accept": MANIFEST_ACCEPT}
    for label, image, reference in (
        ("by digest, warm", lab.small, lab.small.manifest.digest),
        ("by tag (multi-arch index), within TTL", lab.index, lab.index.tag),
    ):
        rates, p99s = Samples(), Samples()
        urls = {s.name: lab.manifest_url(s, image.repository, reference) for s in lab.caches}
        for name, url in urls.items():
            await rates.check(name, partial(_get_ok, lab, url))
        for _ in range(reps):
            for name, url in urls.items():
                try:
                    rate = await request_rate(url, plan.connections, plan.rate_seconds, headers)
                except Exception as exc:  # recorded; the run goes on
                    rates.failures.append(f"{name}: {exc}"[:500])
                    continue
                if rate.non_2xx or rate.errors:
                    # The baseline's own errors under load are a result; ours are a failure.
                    problems = rates.failures if name in CACHESVC_SYSTEMS else rates.remarks
                    problems.append(
                        f"{name}: {rate.non_2xx} non-2xx responses, {rate.errors} socket errors"
                    )
                rates.values[name].append(rate.requests_per_second)
                p99s.values[name].append(rate.p99_ms)
        scenario = f"manifest {label}, {plan.connections} connections"
        values = rates.medians()
        by_digest = label.startswith("by digest")
        multiple = DIGEST_RATE_MULTIPLE if by_digest else RATE_MULTIPLE
        rows.append(
            Row(
                scenario,
                "requests/s",
                "req/s",
                values,
                [_target(values, ">=", multiple, BASELINE)],
                _note(lab, *rates.remarks),
                failures=_failures(rates),
            )
        )
        if by_digest:
            p99 = p99s.medians()
            limit = Target(
                f"< {DIGEST_P99_LIMIT_MS:g} ms", p99.get(CACHESVC), "<", DIGEST_P99_LIMIT_MS
            )
            rows.append(Row(scenario, "p99 latency", "ms", p99, [limit]))
    return rows


async def containerd_fetch(lab: Lab, reps: int) -> list[Row]:
    """``ctr content fetch`` of a fresh 2-layer image through each cache, cold and then warm."""
    size = lab.plan.blob_size
    scenario = f"containerd fetch, {_size(2 * size)} image"
    reason = containerd_unavailable_reason()
    cold, warm = Samples(), Samples()
    if reason is None:
        counter = 0
        for _ in range(reps):
            for service in lab.default_caches:  # not cachesvc-uvloop: run time
                counter += 1
                repository = f"bench/ctr-{counter}"
                await lab.cold_image(repository, IMAGE_TAG, [size, size])
                reference = f"{service.host}/{repository}:{IMAGE_TAG}"
                await cold.take(service.name, partial(_ctr_fetch, lab, reference))
                await warm.take(service.name, partial(_ctr_fetch, lab, reference))
    rows = []
    for label, samples in (("cold cache", cold), ("warm cache", warm)):
        values = samples.medians()
        note = (
            _note(lab, "cachesvc-uvloop not measured here (run time)")
            if reason is None
            else f"skipped: {reason}"
        )
        rows.append(
            Row(
                scenario,
                f"time, {label}",
                "s",
                values,
                [_target(values, "<=", 1.0, BASELINE)],
                note,
                failures=_failures(samples),
            )
        )
    return rows


async def peak_memory(lab: Lab) -> list[Row]:
    """Peak RSS of each cache during ``clients`` concurrent transfers: mostly hits, one fill."""
    plan = lab.plan
    by_size: dict[int, Samples] = {}
    for size in (plan.blob_size, plan.double_blob_size):
        samples = by_size[size] = Samples()
        hit = lab.big.layers[0] if size == plan.blob_size else await lab.cold_blob(size)
        fillers = max(1, plan.clients // 4)
        for service in lab.caches:
            hit_url = lab.blob_url(
                service, BIG_REPOSITORY if size == plan.blob_size else COLD_REPOSITORY, hit.digest
            )
            await samples.check(service.name, partial(_mib_per_second, hit_url, size))
            fill = await lab.cold_blob(size)
            fill_url = lab.blob_url(service, COLD_REPOSITORY, fill.digest)
            urls = [hit_url] * (plan.clients - fillers) + [fill_url] * fillers
            await samples.take(service.name, partial(_peak_during, service, urls, size))
    rows = []
    low, high = by_size[plan.blob_size].medians(), by_size[plan.double_blob_size].medians()
    for size, values in ((plan.blob_size, low), (plan.double_blob_size, high)):
        targets = [Target(f"< {RSS_LIMIT_MIB:.0f} MiB", values.get(CACHESVC), "<", RSS_LIMIT_MIB)]
        if size == plan.double_blob_size:
            targets.append(
                Target(
                    f"flat: <= {RSS_FLAT_FACTOR} x the {_size(plan.blob_size)} peak",
                    ratio(values.get(CACHESVC), low.get(CACHESVC)),
                    "<=",
                    RSS_FLAT_FACTOR,
                )
            )
        rows.append(
            Row(
                f"{plan.clients} concurrent {_size(size)} transfers",
                "daemon peak RSS",
                "MiB",
                values,
                targets,
                _note(lab) or "1 run (peak memory is not timing noise)",
                failures=_failures(by_size[size]),
            )
        )
    return rows


async def _peak_during(service: Service, urls: list[str], size: int) -> float:
    if not reset_peak_rss(service.child.pid):
        raise RuntimeError("cannot reset VmHWM (clear_refs refused)")
    await download_together(urls, size)
    return peak_rss_mib(service.child.pid)


async def _mib_per_second(url: str, size: int) -> float:
    return (await download(url, size)).mib_per_second


async def _get_ok(lab: Lab, url: str, attempts: int = 3) -> float:
    # A few attempts: the distribution proxy sometimes answers a tag with 404 or 500 while
    # another request rewrites the same tag link in its storage.
    status = 0
    for _ in range(attempts):
        async with lab.session.get(url, headers={"Accept": MANIFEST_ACCEPT}) as response:
            await response.read()
            status = response.status
        if status == 200:
            return 0.0
    raise RuntimeError(f"GET {url}: {status} after {attempts} attempts")


async def _ctr_fetch(lab: Lab, reference: str) -> float:
    daemon = Containerd(Path(tempfile.mkdtemp(prefix="ctrd-", dir=lab.workdir)))
    try:
        await daemon.wait_ready()
        return await daemon.fetch_seconds(reference)
    finally:
        daemon.stop()


def _size(size: int) -> str:
    return f"{size // MIB} MiB" if size >= MIB else f"{size // 1024} KiB"
