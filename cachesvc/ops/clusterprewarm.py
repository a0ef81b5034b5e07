"""Cluster prewarm: every member prewarms the images; one job id on the node that was asked.

``POST /admin/v1/prewarm`` with ``"scope": "cluster"`` (``cachesvc prewarm --cluster``) makes
a ``ClusterJob`` here: this node's own part is an ordinary prewarm job; every other member
(the member set when the job was submitted) is asked over its peer API
(``POST /cluster/v1/prewarm``, see ``cachesvc.server.peer_prewarm`` for why that route does
not widen what a peer token allows) and followed (``GET /cluster/v1/prewarm/<id>``) until its
part ends. ``GET /admin/v1/jobs/<id>`` shows each member's state and progress; the job is
done when every member's part is done, failed when any failed (a member that could not be
reached is a failed part, named with why).

One upstream fetch per blob for the whole cluster comes from the members' own fills, not
from here: each member's prewarm asks a blob's owner first, exactly as a pull does, so the
owner makes the one upstream GET and the others stream from it (or from a fan-out holder).

Pins are refused with ``scope: cluster``: pinning on other nodes would be an admin operation
through the peer API, which offers none (pin on each node's admin API instead).
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from dataclasses import dataclass, field
from typing import Any

from cachesvc.background import cancel_all
from cachesvc.cluster.node import Cluster
from cachesvc.cluster.peerclient import PREWARM_PATH, PeerFailed
from cachesvc.config.peeraddress import PeerAddress
from cachesvc.errors import AdminError, NotFound, RegistryError
from cachesvc.ops.jobs import Job, JobState, cancel_running, forget_finished
from cachesvc.ops.prewarm import Prewarmer

__all__ = ["ClusterJob", "ClusterPrewarm", "MemberPart"]

log = logging.getLogger("cachesvc.prewarm")

POLL_INTERVAL = 0.5  # seconds between two looks at a member's part
MAX_POLL_FAILURES = 20  # consecutive failed looks (about 10 s) before a member is given up
_TERMINAL = ("done", "failed", "cancelled")
_COUNTS = ("bytes_done", "bytes_total", "blobs_done", "blobs_total")
_IMAGE_KEYS = ("state", "reason", "digest", "platforms", "blobs_cached", "started", "finished")


@dataclass(slots=True)
class MemberPart:
    """One member's part of a cluster job, as the member last reported it."""

    address: PeerAddress
    is_self: bool
    state: str = "submitting"
    job_id: str | None = None
    reason: str | None = None
    report: dict[str, Any] = field(default_factory=dict)  # the member's job JSON

    def images(self, refs: list[str]) -> list[dict[str, Any]]:
        """The member's images, each named ``<member> <ref>`` (one progress bar each)."""
        reported = self.report.get("images")
        rows: list[dict[str, Any]] = []
        for i, ref in enumerate(refs):
            raw = reported[i] if isinstance(reported, list) and i < len(reported) else {}
            raw = raw if isinstance(raw, dict) else {}
            row: dict[str, Any] = {"ref": f"{self.address} {ref}"}
            row.update({k: _count(raw.get(k)) for k in _COUNTS})
            row.update({k: raw.get(k) for k in _IMAGE_KEYS})
            row["blobs_cached"] = _count(raw.get("blobs_cached"))
            unknown = not isinstance(row["state"], str)
            ended = self.state in ("failed", "cancelled") and row["state"] not in ("done", "failed")
            if unknown or ended:
                row["state"] = "failed" if self.state in _TERMINAL else "queued"
                row["reason"] = row["reason"] or self.reason
            rows.append(row)
        return rows

    def to_json(self) -> dict[str, Any]:
        """As ``GET /admin/v1/jobs/<id>`` lists it under ``members``."""
        body: dict[str, Any] = {
            "address": str(self.address), "self": self.is_self, "state": self.state,
            "job": self.job_id, "reason": self.reason,
        }  # fmt: skip
        body.update({k: _count(self.report.get(k)) for k in _COUNTS})
        return body


def _count(value: object) -> int:
    """A non-negative count from a member's JSON (anything else counts as 0)."""
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


@dataclass(slots=True)
class ClusterJob:
    """A prewarm of the whole cluster: one part per member."""

    id: str
    refs: list[str]
    platforms: list[str]
    members: list[MemberPart]
    created: float = field(default_factory=time.time)
    state: JobState = "running"
    started: float | None = None
    finished: float | None = None
    task: asyncio.Task[None] | None = None

    def to_json(self) -> dict[str, object]:
        """The job JSON of ``/admin/v1/jobs/<id>``, with ``scope`` and ``members``."""
        images = [row for part in self.members for row in part.images(self.refs)]
        return {
            "id": self.id, "scope": "cluster", "state": self.state, "platforms": self.platforms,
            "pin": False, "created": self.created, "started": self.started,
            "finished": self.finished,
            **{k: sum(int(i[k]) for i in images) for k in _COUNTS},
            "members": [p.to_json() for p in self.members],
            "images": images,
        }  # fmt: skip


class ClusterPrewarm:
    """Starts and follows cluster jobs; keeps them as long as the prewarmer keeps its own."""

    def __init__(self, prewarmer: Prewarmer, cluster: Cluster, retention: float) -> None:
        self._prewarmer = prewarmer
        self._cluster = cluster
        self._retention = retention
        self._jobs: dict[str, ClusterJob] = {}

    def submit(self, refs: list[str], platforms: list[str] | None, pin: bool) -> ClusterJob:
        """Validate (this node's part starts first, so bad references are a 400 here) and
        start asking the other members."""
        if pin:
            raise AdminError(
                "pin is not offered with scope cluster: pin on each node's admin "
                "API (the peer API changes nothing about what a node may evict)"
            )
        local = self._prewarmer.submit(refs, platforms, pin=False)
        self._prune()
        me = self._cluster.self_address
        parts = [MemberPart(me, True, state=local.state, job_id=local.id)]
        others = sorted(m for m in self._cluster.membership.members if m != me)
        parts += [MemberPart(m, False) for m in others]
        refs = [i.ref for i in local.images]
        job = ClusterJob(secrets.token_hex(8), refs, local.platforms, parts)
        job.started = time.time()
        self._jobs[job.id] = job
        job.task = asyncio.get_running_loop().create_task(
            self._run(job, local), name=f"cluster prewarm {job.id}"
        )
        members = [str(p.address) for p in parts]
        fields = {"job": job.id, "images": job.refs, "members": members}
        log.info("cluster prewarm submitted", extra={"fields": fields})
        return job

    def get(self, job_id: str) -> ClusterJob | None:
        """A cluster job by id, or None (it may be a node job)."""
        self._prune()
        return self._jobs.get(job_id)

    def list(self) -> list[ClusterJob]:
        """Every cluster job still kept."""
        self._prune()
        return list(self._jobs.values())

    def cancel(self, job_id: str) -> ClusterJob:
        """Cancel every member's part that has not ended."""
        job = self._jobs.get(job_id)
        if job is None:
            raise NotFound(f"no cluster prewarm job {job_id[:40]!r}")
        cancel_running(job)
        return job

    async def close(self) -> None:
        """Stop following (shutdown); members' parts run on by themselves."""
        await cancel_all(j.task for j in self._jobs.values())

    def _prune(self) -> None:
        forget_finished(self._jobs, self._retention)

    async def _run(self, job: ClusterJob, local: Job) -> None:
        follow = [self._follow_local(job.members[0], local)]
        follow += [self._follow_member(job, part) for part in job.members[1:]]
        tasks = [asyncio.ensure_future(f) for f in follow]
        try:
            await asyncio.gather(*tasks)
            states = {p.state for p in job.members}
            job.state = "done" if states == {"done"} else "failed"
        except asyncio.CancelledError:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            self._prewarmer.cancel(local.id)
            await asyncio.gather(*(self._cancel_member(p) for p in job.members[1:]))
            job.state = "cancelled"
        finally:
            job.finished = time.time()
            log.info("cluster prewarm finished", extra={"fields": {
                "job": job.id, "state": job.state,
                "members": {str(p.address): p.state for p in job.members}}})  # fmt: skip

    async def _follow_local(self, part: MemberPart, local: Job) -> None:
        while True:
            part.report = local.to_json()
            part.state = local.state
            if local.task is None or local.task.done():
                part.report, part.state = local.to_json(), local.state
                return
            await asyncio.wait((local.task,), timeout=POLL_INTERVAL)

    async def _follow_member(self, job: ClusterJob, part: MemberPart) -> None:
        body = {"images": job.refs, "platforms": job.platforms}
        answer = await self._ask(part, "POST", PREWARM_PATH, body, expect=202)
        if answer is None:
            return
        job_id = answer.get("id")
        if not isinstance(job_id, str) or not job_id.isalnum() or len(job_id) > 64:
            self._give_up(part, "answered a prewarm without a job id")
            return
        part.job_id, part.report, part.state = job_id, answer, _state(answer)
        failures = 0
        while part.state not in _TERMINAL:
            await asyncio.sleep(POLL_INTERVAL)
            try:
                status, data = await self._cluster.client.control(
                    part.address, "GET", f"{PREWARM_PATH}/{job_id}"
                )
            except RegistryError as exc:
                failures += 1
                if failures >= MAX_POLL_FAILURES:
                    self._give_up(part, f"unreachable: {exc}")
                continue
            if status != 200 or not isinstance(data, dict):
                self._give_up(part, f"answered {status} for its part: {_message(data)}")
                return
            failures, part.report, part.state = 0, data, _state(data)
        if part.state == "failed":
            part.reason = "; ".join(
                f"{i.get('ref')}: {i.get('reason')}" for i in part.report.get("images", [])
                if isinstance(i, dict) and i.get("state") == "failed"
            )[:1000] or "failed"  # fmt: skip

    async def _ask(
        self, part: MemberPart, method: str, path: str, body: object, *, expect: int
    ) -> dict[str, Any] | None:
        try:
            status, data = await self._cluster.client.control(part.address, method, path, body)
        except RegistryError as exc:
            if isinstance(exc, PeerFailed):
                self._cluster.failed(exc)
            self._give_up(part, f"unreachable: {exc}")
            return None
        if status != expect or not isinstance(data, dict):
            self._give_up(part, f"answered {status}: {_message(data)}")
            return None
        return data

    async def _cancel_member(self, part: MemberPart) -> None:
        if part.job_id is None or part.state in _TERMINAL:
            part.state = "cancelled" if part.state not in _TERMINAL else part.state
            return
        await self._ask(part, "DELETE", f"{PREWARM_PATH}/{part.job_id}", None, expect=202)
        part.state = "cancelled"

    @staticmethod
    def _give_up(part: MemberPart, reason: str) -> None:
        part.state, part.reason = "failed", reason[:1000]
        log.warning("cluster prewarm: member %s: %s", part.address, part.reason)


def _state(data: dict[str, Any]) -> str:
    state = data.get("state")
    known = ("queued", "running", *_TERMINAL)
    return state if isinstance(state, str) and state in known else "running"


def _message(data: object) -> str:
    if isinstance(data, dict) and isinstance(data.get("error"), dict):
        return str(data["error"].get("message", ""))[:300]
    return "unexpected answer"
