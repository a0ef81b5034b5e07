"""What ``cachesvc status`` prints, from the daemon's ``/readyz`` body and ``/metrics`` text.

Pure rendering, apart from the requests ``adminclient.run_status`` makes: the operator's
one-screen summary (readiness in /readyz's own words, the cache, the upstream endpoints),
so it can be read and tested without a daemon.
"""

from __future__ import annotations

import json

from prometheus_client.parser import text_string_to_metric_families

from cachesvc.metrics import RECENT_WINDOW
from cachesvc.ops.progress import human_bytes, human_seconds

__all__ = ["Samples", "hit_ratio", "status_lines"]

Samples = dict[str, list[tuple[dict[str, str], float]]]


def _samples(text: str) -> Samples:
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples.setdefault(sample.name, []).append((sample.labels, sample.value))
    return samples


def _sum(samples: Samples, name: str, **match: str) -> float:
    return sum(
        v for labels, v in samples.get(name, [])
        if all(labels.get(k) == want or (want == "*" and k in labels) for k, want in match.items())
    )  # fmt: skip


def hit_ratio(samples: Samples) -> tuple[float, float]:
    """(answered from the cache, all) over manifest and blob requests."""
    cached = total = 0.0
    for labels, value in samples.get("cachesvc_requests_total", []):
        if labels.get("kind") in ("manifest", "blob"):
            total += value
            if labels.get("result") in ("hit", "stale"):
                cached += value
    return cached, total


def _readiness_lines(ready: dict[str, object]) -> list[str]:
    """What /readyz says is wrong, in its words: the storage problem, and whether
    containerd on the node is wired (with each wiring problem on its own line), because
    "not wired" alone does not say which file to fix."""
    lines = []
    if isinstance(ready.get("storage"), str):
        lines.append(f"storage:         {ready['storage']}")
    detail = ready.get("containerd")
    if not isinstance(detail, dict):
        return lines
    problems = [str(p) for p in detail.get("problems") or [] if isinstance(p, str)]
    if detail.get("checked") is not True:
        lines.append(f"containerd:      {problems[0] if problems else 'not checked'}")
    elif detail.get("wired") is True:
        lines.append(f"containerd:      wired (hosts directory {detail.get('hosts_dir')})")
    else:
        where = f" (hosts directory {detail['hosts_dir']})" if detail.get("hosts_dir") else ""
        lines.append(f"containerd:      NOT wired{where}: pulls on this node bypass the cache")
        lines += [f"  {problem}" for problem in problems]
    return lines


def _store_lines(samples: Samples) -> list[str]:
    cached, total = hit_ratio(samples)
    size = _sum(samples, "cachesvc_cache_size_bytes")
    capacity = _sum(samples, "cachesvc_cache_capacity_bytes")
    entries = _sum(samples, "cachesvc_cache_entries")
    free = _sum(samples, "cachesvc_storage_free_bytes")
    ratio = f"{cached / total:.1%}" if total else "n/a"
    cap = f"of {human_bytes(capacity)} ({size / capacity:.0%})" if capacity else "(no size limit)"
    fills = _sum(samples, "cachesvc_fills_in_flight")
    waiters = _sum(samples, "cachesvc_fill_waiters")
    jobs = _sum(samples, "cachesvc_prewarm_jobs_running")
    pinned = _sum(samples, "cachesvc_pinned_images")
    return [
        f"hit ratio:       {ratio} ({cached:.0f} of {total:.0f} manifest and blob "
        "requests answered from the cache)",
        f"cache:           {human_bytes(size)} {cap}, {entries:.0f} entries; "
        f"{human_bytes(free)} free on the filesystem",
        f"fills in flight: {fills:.0f} ({waiters:.0f} client responses following)",
        f"prewarm:         {jobs:.0f} jobs running, {pinned:.0f} images pinned",
    ]


def _upstream_lines(samples: Samples, now: float) -> list[str]:
    """One line per endpoint: health, last success and last error apart, recent errors."""
    endpoints: dict[tuple[str, str], dict[str, float]] = {}
    for name, key in (("cachesvc_upstream_last_success_timestamp_seconds", "ok"),
                      ("cachesvc_upstream_last_error_timestamp_seconds", "error"),
                      ("cachesvc_upstream_recent_errors", "recent")):  # fmt: skip
        for labels, value in samples.get(name, []):
            endpoints.setdefault((labels["registry"], labels["endpoint"]), {})[key] = value
    lines = []
    for (registry, endpoint), seen in sorted(endpoints.items()):
        ok, err = seen.get("ok", 0.0), seen.get("error", 0.0)
        health = "healthy" if ok >= err else "FAILING"
        success = f"{human_seconds(now - ok)} ago" if ok else "never"
        error = f"{human_seconds(now - err)} ago" if err else "never"
        recent = int(seen.get("recent", 0.0))
        lines.append(f"  {registry:<20} {endpoint:<40} {health:<8} last success {success}, "
                     f"last error {error}; {recent} error{'' if recent == 1 else 's'} in the "
                     f"last {RECENT_WINDOW / 60:.0f} minutes")  # fmt: skip
    return lines or ["  (no upstream requests yet)"]


def status_lines(url: str, ready_body: str, metrics_text: str, now: float) -> list[str]:
    """The summary's lines: state, readiness detail, cache, then one line per endpoint."""
    samples = _samples(metrics_text)
    try:
        ready = json.loads(ready_body)
        state = ready.get("status", "?")
    except (ValueError, AttributeError):
        ready, state = {}, "?"
    lines = [f"cachesvc at {url}: {state}", *_readiness_lines(ready)]
    lines += [*_store_lines(samples), "upstream:"]
    lines += _upstream_lines(samples, now)
    return lines
