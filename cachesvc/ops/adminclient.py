"""The client side of the admin listener, for ``cachesvc prewarm``, ``status``, ``images``.

Each ``run_*`` coroutine talks to a running daemon and returns the exit status:

    0  success (every image prewarmed; the daemon is ready; the inventory printed)
    1  the work failed (an image failed or the job was cancelled; the daemon is not ready)
    2  usage: bad arguments or references the daemon rejected
    3  the admin API could not be used: unreachable, no token, token refused

``status`` reads only the open ``/metrics`` and ``/readyz``, so it needs no token.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass
from typing import Any, TextIO

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from cachesvc.errors import AdminUnavailable
from cachesvc.ops.progress import Progress, human_bytes, human_seconds

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_ADMIN = 0, 1, 2, 3
TIMEOUT = aiohttp.ClientTimeout(total=30, sock_connect=5)


@dataclass(frozen=True, slots=True)
class AdminClient:
    """Where the admin listener is and the token to send (None: open endpoints only)."""

    url: str
    token: str | None

    def _headers(self) -> dict[str, str]:
        if self.token is None:
            raise AdminUnavailable(
                "no admin token: pass --token-file FILE or set admin.token_file in the config"
            )
        return {"Authorization": f"Bearer {self.token}"}

    async def call(
        self, session: aiohttp.ClientSession, method: str, path: str, body: object = None
    ) -> Any:
        """One /admin/v1 request; AdminUnavailable on transport, auth or usage errors."""
        try:
            async with session.request(
                method, self.url + path, json=body, headers=self._headers(), timeout=TIMEOUT
            ) as resp:
                text = await resp.text()
                data = json.loads(text) if text else {}
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            raise AdminUnavailable(f"cannot reach the admin API at {self.url}: {exc}") from None
        if resp.status in (401, 403):
            message = data.get("error", {}).get("message", "") if isinstance(data, dict) else ""
            raise AdminUnavailable(f"the admin API refused the request ({resp.status}): {message}")
        if resp.status >= 400:
            message = data.get("error", {}).get("message", text) if isinstance(data, dict) else text
            raise AdminUnavailable(message, EXIT_USAGE if resp.status < 500 else EXIT_FAILED)
        return data

    async def open_text(self, session: aiohttp.ClientSession, path: str) -> tuple[int, str]:
        """GET an open endpoint (``/metrics``, ``/readyz``)."""
        try:
            async with session.get(self.url + path, timeout=TIMEOUT) as resp:
                return resp.status, await resp.text()
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise AdminUnavailable(f"cannot reach cachesvc at {self.url}: {exc}") from None


async def run_prewarm(
    client: AdminClient,
    refs: list[str],
    platforms: list[str],
    pin: bool,
    out: TextIO,
    *,
    tty: bool,
    interval: float | None = None,
) -> int:
    """Submit a job, follow it with progress output, and end with a summary."""
    progress = Progress(out, tty=tty)
    interval = interval if interval is not None else (0.2 if tty else 1.0)
    async with aiohttp.ClientSession() as session:
        body = {"images": refs, "platforms": platforms or None, "pin": pin}
        job = await client.call(session, "POST", "/admin/v1/prewarm", body)
        job_id = job["id"]
        if not tty:
            out.write(f"prewarm job {job_id}: {len(refs)} images, platforms "
                      f"{', '.join(job['platforms'])}{', pin' if pin else ''}\n")  # fmt: skip
        try:
            while True:
                job = await client.call(session, "GET", f"/admin/v1/jobs/{job_id}")
                progress.update(job)
                if job["state"] not in ("queued", "running"):
                    break
                await asyncio.sleep(interval)
        except asyncio.CancelledError:
            # Ctrl-C: do not leave the job running behind the operator's back.
            await client.call(session, "DELETE", f"/admin/v1/jobs/{job_id}")
            out.write(f"\nprewarm {job_id}: cancelled\n")
            raise
    out.write(progress.summary(job))
    out.flush()
    return EXIT_OK if job["state"] == "done" else EXIT_FAILED


def _samples(text: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    samples: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples.setdefault(sample.name, []).append((sample.labels, sample.value))
    return samples


def _sum(samples: dict[str, list[tuple[dict[str, str], float]]], name: str, **match: str) -> float:
    return sum(
        v for labels, v in samples.get(name, [])
        if all(labels.get(k) == want or (want == "*" and k in labels) for k, want in match.items())
    )  # fmt: skip


def hit_ratio(samples: dict[str, list[tuple[dict[str, str], float]]]) -> tuple[float, float]:
    """(answered from the cache, all) over manifest and blob requests."""
    cached = total = 0.0
    for labels, value in samples.get("cachesvc_requests_total", []):
        if labels.get("kind") in ("manifest", "blob"):
            total += value
            if labels.get("result") in ("hit", "stale"):
                cached += value
    return cached, total


async def run_status(client: AdminClient, out: TextIO) -> int:
    """A short health summary from /readyz and /metrics."""
    async with aiohttp.ClientSession() as session:
        ready_status, ready_body = await client.open_text(session, "/readyz")
        _, metrics_text = await client.open_text(session, "/metrics")
    samples = _samples(metrics_text)
    try:
        state = json.loads(ready_body).get("status", "?")
    except ValueError:
        state = "?"
    cached, total = hit_ratio(samples)
    size = _sum(samples, "cachesvc_cache_size_bytes")
    capacity = _sum(samples, "cachesvc_cache_capacity_bytes")
    entries = _sum(samples, "cachesvc_cache_entries")
    free = _sum(samples, "cachesvc_storage_free_bytes")
    lines = [f"cachesvc at {client.url}: {state}"]
    ratio = f"{cached / total:.1%}" if total else "n/a"
    lines.append(f"hit ratio:       {ratio} ({cached:.0f} of {total:.0f} manifest and blob "
                 "requests answered from the cache)")  # fmt: skip
    cap = f"of {human_bytes(capacity)} ({size / capacity:.0%})" if capacity else "(no size limit)"
    lines.append(f"cache:           {human_bytes(size)} {cap}, {entries:.0f} entries; "
                 f"{human_bytes(free)} free on the filesystem")  # fmt: skip
    fills = _sum(samples, "cachesvc_fills_in_flight")
    waiters = _sum(samples, "cachesvc_fill_waiters")
    lines.append(f"fills in flight: {fills:.0f} ({waiters:.0f} client responses following)")
    jobs = _sum(samples, "cachesvc_prewarm_jobs_running")
    pinned = _sum(samples, "cachesvc_pinned_images")
    lines.append(f"prewarm:         {jobs:.0f} jobs running, {pinned:.0f} images pinned")
    lines.append("upstream:")
    endpoints: dict[tuple[str, str], dict[str, float]] = {}
    for name, key in (("cachesvc_upstream_last_success_timestamp_seconds", "ok"),
                      ("cachesvc_upstream_last_error_timestamp_seconds", "error")):  # fmt: skip
        for labels, value in samples.get(name, []):
            endpoints.setdefault((labels["registry"], labels["endpoint"]), {})[key] = value
    now = time.time()
    for (registry, endpoint), seen in sorted(endpoints.items()):
        errors = _sum(samples, "cachesvc_upstream_requests_total", registry=registry,
                      endpoint=endpoint, status_class="error") + _sum(
            samples, "cachesvc_upstream_requests_total", registry=registry, endpoint=endpoint,
            status_class="5xx")  # fmt: skip
        ok, err = seen.get("ok", 0.0), seen.get("error", 0.0)
        health = "healthy" if ok >= err else "FAILING"
        last = max(ok, err)
        lines.append(f"  {registry:<20} {endpoint:<40} {health:<8} last answer "
                     f"{human_seconds(now - last)} ago, {errors:.0f} errors")  # fmt: skip
    if not endpoints:
        lines.append("  (no upstream requests yet)")
    out.write("\n".join(lines) + "\n")
    return EXIT_OK if ready_status == 200 else EXIT_FAILED


async def run_images(
    client: AdminClient, filters: dict[str, str], out: TextIO, *, as_json: bool
) -> int:
    """The inventory as a table (or JSON)."""
    async with aiohttp.ClientSession() as session:
        query = "&".join(f"{k}={v}" for k, v in filters.items())
        data = await client.call(
            session, "GET", "/admin/v1/images" + (f"?{query}" if query else "")
        )
    rows = data["images"]
    if as_json:
        out.write(json.dumps(rows, indent=2) + "\n")
        return EXIT_OK
    header = ("REGISTRY", "REPOSITORY", "TAGS", "DIGEST", "PLATFORMS", "SIZE", "BLOBS",
              "LAST PULLED", "PINNED")  # fmt: skip
    table = [header]
    now = time.time()
    for r in rows:
        table.append((
            r["registry"] or "?", r["repository"] or "?", ",".join(r["tags"]) or "-",
            r["digest"][:19], ",".join(r["platforms"]), human_bytes(r["size_bytes"]),
            f"{r['blobs_cached']}/{r['blobs_total']}",
            human_seconds(now - r["last_pulled"]) + " ago" if r["last_pulled"] else "-",
            "yes" if r["pinned"] else "",
        ))  # fmt: skip
    widths = [max(len(str(row[i])) for row in table) for i in range(len(header))]
    for row in table:
        out.write("  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
        out.write("\n")
    out.write(f"{len(rows)} images, {human_bytes(sum(r['size_bytes'] for r in rows))}\n")
    return EXIT_OK
