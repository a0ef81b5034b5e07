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
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TextIO
from urllib.parse import quote

import aiohttp

from cachesvc.errors import AdminUnavailable
from cachesvc.ops.progress import Progress, human_bytes, human_seconds
from cachesvc.ops.statusreport import status_lines

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
    lines = status_lines(client.url, ready_body, metrics_text, time.time())
    out.write("\n".join(lines) + "\n")
    if token_problem is not None:
        out.write(f"admin API:       {token_problem}\n")
        return token_problem.status
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


async def _delete_each(
    client: AdminClient,
    collection: str,
    refs: list[str],
    out: TextIO,
    report: Callable[[str, Any], None],
) -> int:
    """``DELETE <collection><ref>`` for each reference, ``report`` on each success.

    A reference the daemon refuses (not pinned, not cached) is named and the rest still
    run; the exit status is the worst refusal's. An unreachable daemon ends the verb.
    """
    status = EXIT_OK
    async with aiohttp.ClientSession() as session:
        for ref in refs:
            try:
                data = await client.call(session, "DELETE", collection + path_of(ref))
            except AdminUnavailable as exc:
                if exc.status == EXIT_ADMIN:
                    raise
                out.write(f"{ref}: {exc}\n")
                status = max(status, exc.status)
                continue
            report(ref, data)
    return status


async def run_unpin(client: AdminClient, refs: list[str], out: TextIO) -> int:
    """``DELETE /admin/v1/pins/<ref>`` for each reference; 2 if one was not pinned."""

    def report(ref: str, data: Any) -> None:
        for pin in data["unpinned"]:
            out.write(f"unpinned {pin['ref']} ({pin['digest']})\n")

    return await _delete_each(client, "/admin/v1/pins/", refs, out, report)


async def run_purge(client: AdminClient, refs: list[str], out: TextIO) -> int:
    """``DELETE /admin/v1/images/<ref>`` for each reference; 2 if one could not be purged."""

    def report(ref: str, data: Any) -> None:
        kept = len(data["kept_in_use"])
        out.write(f"purged {ref} ({data['digest']}): {data['blobs_removed']} blobs, "
                  f"{human_bytes(data['bytes_freed'])} freed, {data['blobs_shared']} "
                  f"shared with other images kept"
                  f"{f', {kept} in use now (evicted later)' if kept else ''}\n")  # fmt: skip

    return await _delete_each(client, "/admin/v1/images/", refs, out, report)


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
