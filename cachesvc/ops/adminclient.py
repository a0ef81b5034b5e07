"""The client side of the admin listener: one ``run_*`` per CLI verb, one verb per endpoint.

    prewarm  POST /admin/v1/prewarm (then follows GET /admin/v1/jobs/<id>)
    jobs     GET /admin/v1/jobs, GET /admin/v1/jobs/<id>
    cancel   DELETE /admin/v1/jobs/<id>
    pins     GET /admin/v1/pins
    unpin    DELETE /admin/v1/pins/<ref>
    images   GET /admin/v1/images
    purge    DELETE /admin/v1/images/<ref>
    status   GET /readyz and /metrics (open), and the token when one is at hand

Each ``run_*`` coroutine talks to a running daemon and returns the exit status:

    0  success (every image prewarmed; the daemon is ready; the inventory printed)
    1  the work failed (an image failed or the job was cancelled; the daemon is not ready)
    2  usage: bad arguments or references the daemon rejected
    3  the admin API could not be used: unreachable, no token, token refused

``status`` needs no token (``/metrics`` and ``/readyz`` are open); given one, it checks
it, so a wrong token is reported (exit 3) before the next prewarm finds out.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, TextIO
from urllib.parse import quote

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from cachesvc.errors import AdminUnavailable
from cachesvc.metrics import RECENT_WINDOW
from cachesvc.ops.progress import Progress, human_bytes, human_seconds

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_ADMIN = 0, 1, 2, 3
TIMEOUT = aiohttp.ClientTimeout(total=30, sock_connect=5)
# The largest answer read: an inventory of 100,000 images or a /metrics page of a node with
# hundreds of registries is a few MiB. Anything longer is not a cachesvc listener (a wrong
# --admin-url pointing at a download), and reading it whole would exhaust the CLI's memory.
MAX_ANSWER_BYTES = 64 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class AdminClient:
    """Where the admin listener is and the token to send (None: open endpoints only).

    ``token_file`` is where the token came from, so that a refusal can name it.
    """

    url: str
    token: str | None
    token_file: str | None = None
    max_answer: int = MAX_ANSWER_BYTES

    def _headers(self) -> dict[str, str]:
        if self.token is None:
            raise AdminUnavailable(
                "no admin token: pass --token-file FILE or set admin.token_file in the config"
            )
        return {"Authorization": f"Bearer {self.token}"}

    def refused(self, status: int, message: str) -> AdminUnavailable:
        """The error for a 401/403: which token, which daemon, and what to do."""
        source = f"the token in {self.token_file}" if self.token_file else "the admin token"
        if status == 401:
            return AdminUnavailable(
                f"{source} was refused by the daemon at {self.url} (401): it must be the "
                "content of that daemon's admin.token_file (pass the right one with "
                "--token-file FILE)"
            )
        return AdminUnavailable(
            f"the daemon at {self.url} refused the request ({status}): {message}"
        )

    async def call(
        self, session: aiohttp.ClientSession, method: str, path: str, body: object = None
    ) -> Any:
        """One /admin/v1 request; AdminUnavailable on transport, auth or usage errors."""
        try:
            async with session.request(
                method, self.url + path, json=body, headers=self._headers(), timeout=TIMEOUT
            ) as resp:
                text = await self._read(resp, path)
                data = json.loads(text) if text else {}
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            raise AdminUnavailable(f"cannot reach the admin API at {self.url}: {exc}") from None
        message = text
        if isinstance(data, dict) and isinstance(data.get("error"), dict):
            message = str(data["error"].get("message", text))
        if resp.status in (401, 403):
            raise self.refused(resp.status, message)
        if resp.status >= 400:
            raise AdminUnavailable(message, EXIT_USAGE if resp.status < 500 else EXIT_FAILED)
        return data

    async def open_text(self, session: aiohttp.ClientSession, path: str) -> tuple[int, str]:
        """GET an open endpoint (``/metrics``, ``/readyz``)."""
        try:
            async with session.get(self.url + path, timeout=TIMEOUT) as resp:
                return resp.status, await self._read(resp, path)
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise AdminUnavailable(f"cannot reach cachesvc at {self.url}: {exc}") from None

    async def _read(self, resp: aiohttp.ClientResponse, path: str) -> str:
        """The answer's text, refused (``AdminUnavailable``) past ``max_answer`` bytes:
        counted as it arrives, so an endless answer costs at most that much memory (the
        whole request is bounded in time by ``TIMEOUT``)."""
        too_big = AdminUnavailable(
            f"the answer of {self.url}{path} is over {self.max_answer} bytes: that is not "
            "a cachesvc admin listener (check --admin-url)"
        )
        if resp.content_length is not None and resp.content_length > self.max_answer:
            resp.close()
            raise too_big
        parts: list[bytes] = []
        total = 0
        async for chunk in resp.content.iter_any():
            total += len(chunk)
            if total > self.max_answer:
                resp.close()
                raise too_big
            parts.append(chunk)
        return b"".join(parts).decode("utf-8", errors="replace")  # cachesvc answers UTF-8


async def run_prewarm(
    client: AdminClient,
    refs: list[str],
    platforms: list[str],
    pin: bool,
    out: TextIO,
    *,
    tty: bool,
    interval: float | None = None,
    scope: str = "node",
) -> int:
    """Submit a job, follow it with progress output, and end with a summary.

    ``scope="cluster"``: every member prewarms; the job's images are one row per member
    and image (``<member> <ref>``), so the same bars show each member's progress.
    """
    progress = Progress(out, tty=tty)
    interval = interval if interval is not None else (0.2 if tty else 1.0)
    async with aiohttp.ClientSession() as session:
        body: dict[str, object] = {"images": refs, "platforms": platforms or None, "pin": pin}
        if scope != "node":
            body["scope"] = scope
        job = await client.call(session, "POST", "/admin/v1/prewarm", body)
        job_id = job["id"]
        if not tty:
            members = f" on {len(job['members'])} members" if "members" in job else ""
            out.write(f"prewarm job {job_id}: {len(refs)} images{members}, platforms "
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


async def run_status(client: AdminClient, out: TextIO) -> int:
    """A short health summary from /readyz and /metrics.

    With a token at hand it is also tried (one cheap authenticated request), so that a
    wrong token is reported here rather than at the next prewarm.
    """
    async with aiohttp.ClientSession() as session:
        ready_status, ready_body = await client.open_text(session, "/readyz")
        _, metrics_text = await client.open_text(session, "/metrics")
        token_problem = None
        if client.token is not None:
            try:
                await client.call(session, "GET", "/admin/v1/pins")
            except AdminUnavailable as exc:
                token_problem = exc
    samples = _samples(metrics_text)
    try:
        ready = json.loads(ready_body)
        state = ready.get("status", "?")
    except (ValueError, AttributeError):
        ready, state = {}, "?"
    lines = [f"cachesvc at {client.url}: {state}", *_readiness_lines(ready)]
    lines += [*_store_lines(samples), "upstream:"]
    lines += _upstream_lines(samples, time.time())
    out.write("\n".join(lines) + "\n")
    if token_problem is not None:
        out.write(f"admin API:       {token_problem}\n")
        return token_problem.status
    return EXIT_OK if ready_status == 200 else EXIT_FAILED


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
    _table(out, table)
    out.write(f"{len(rows)} images, {human_bytes(sum(r['size_bytes'] for r in rows))}\n")
    return EXIT_OK


def path_of(reference: str) -> str:
    """A reference as a path segment of the admin API (``/`` and ``:``/``@`` kept)."""
    return quote(reference, safe="/:@")


async def run_pins(client: AdminClient, out: TextIO) -> int:
    """``GET /admin/v1/pins`` as a table."""
    async with aiohttp.ClientSession() as session:
        data = await client.call(session, "GET", "/admin/v1/pins")
    pins = data["pins"]
    table = [("REFERENCE", "DIGEST", "PLATFORMS", "BLOBS", "PINNED")]
    now = time.time()
    for p in pins:
        table.append((p["ref"], p["digest"][:19], ",".join(p["platforms"]) or "-",
                      str(p["blobs"]), human_seconds(now - p["pinned_at"]) + " ago"))  # fmt: skip
    _table(out, table)
    out.write(f"{len(pins)} pins\n")
    return EXIT_OK


async def run_unpin(client: AdminClient, refs: list[str], out: TextIO) -> int:
    """``DELETE /admin/v1/pins/<ref>`` for each reference; 2 if one was not pinned."""
    status = EXIT_OK
    async with aiohttp.ClientSession() as session:
        for ref in refs:
            try:
                data = await client.call(session, "DELETE", "/admin/v1/pins/" + path_of(ref))
            except AdminUnavailable as exc:
                if exc.status == EXIT_ADMIN:
                    raise
                out.write(f"{ref}: {exc}\n")
                status = max(status, exc.status)
                continue
            for pin in data["unpinned"]:
                out.write(f"unpinned {pin['ref']} ({pin['digest']})\n")
    return status


async def run_purge(client: AdminClient, refs: list[str], out: TextIO) -> int:
    """``DELETE /admin/v1/images/<ref>`` for each reference; 2 if one could not be purged."""
    status = EXIT_OK
    async with aiohttp.ClientSession() as session:
        for ref in refs:
            try:
                data = await client.call(session, "DELETE", "/admin/v1/images/" + path_of(ref))
            except AdminUnavailable as exc:
                if exc.status == EXIT_ADMIN:
                    raise
                out.write(f"{ref}: {exc}\n")
                status = max(status, exc.status)
                continue
            kept = len(data["kept_in_use"])
            out.write(f"purged {ref} ({data['digest']}): {data['blobs_removed']} blobs, "
                      f"{human_bytes(data['bytes_freed'])} freed, {data['blobs_shared']} "
                      f"shared with other images kept"
                      f"{f', {kept} in use now (evicted later)' if kept else ''}\n")  # fmt: skip
    return status


async def run_jobs(client: AdminClient, job_id: str | None, out: TextIO) -> int:
    """``GET /admin/v1/jobs`` (a table) or ``/jobs/<id>`` (one job with its images)."""
    async with aiohttp.ClientSession() as session:
        if job_id is None:
            jobs = (await client.call(session, "GET", "/admin/v1/jobs"))["jobs"]
        else:
            jobs = [await client.call(session, "GET", f"/admin/v1/jobs/{quote(job_id)}")]
    table = [("JOB", "STATE", "IMAGES", "DONE", "BYTES")]
    for j in jobs:
        done = sum(1 for i in j["images"] if i["state"] == "done")
        size = f"{human_bytes(j['bytes_done'])}/{human_bytes(j['bytes_total'])}"
        table.append((j["id"], j["state"], str(len(j["images"])), str(done), size))
    _table(out, table)
    if job_id is not None:
        for image in jobs[0]["images"]:
            reason = f": {image['reason']}" if image["reason"] else ""
            out.write(f"  {image['ref']}: {image['state']}{reason}\n")
    return EXIT_OK


async def run_cancel(client: AdminClient, job_id: str, out: TextIO) -> int:
    """``DELETE /admin/v1/jobs/<id>``."""
    async with aiohttp.ClientSession() as session:
        job = await client.call(session, "DELETE", f"/admin/v1/jobs/{quote(job_id)}")
    out.write(f"prewarm {job['id']}: {job['state']}\n")
    return EXIT_OK


def _table(out: TextIO, table: Sequence[Sequence[object]]) -> None:
    widths = [max(len(str(row[i])) for row in table) for i in range(len(table[0]))]
    for row in table:
        cells = (str(c).ljust(w) for c, w in zip(row, widths, strict=True))
        out.write("  ".join(cells).rstrip() + "\n")
