"""The peer API's one control route: a member's part of a cluster prewarm.

::

    POST   /cluster/v1/prewarm        {"images": [...], "platforms": [...]} -> 202 {"id": ...}
    GET    /cluster/v1/prewarm/<id>   that job's progress (the job JSON of /admin/v1/jobs/<id>)
    DELETE /cluster/v1/prewarm/<id>   cancel it (the asked node's cluster job was cancelled)

Why this is on the peer listener, and why it does not widen what a peer token allows
(issue 13: the peer API "serves content only by digest and resolves tags only for configured
registries; it offers nothing else (no files, no admin operations)"):

- A peer token already lets its holder make this daemon fetch any tag of a configured
  registry and any blob by digest into its cache (``GET /v2/.../manifests/<tag>?ns=`` and
  ``/blobs/<digest>``). A prewarm here does exactly those fetches, through the same
  ``Mirror`` calls, for references that must route to a configured registry (the router
  refuses any other): the set of things a token holder can cause is unchanged; what changes
  is that one request walks an image instead of one request per blob.
- It is not an admin operation: no pins (``pin`` is refused, so a peer cannot change what
  this node may evict), no purge, no listing of this node's jobs, images or pins. A peer
  sees only the jobs submitted over this route (by their unguessable ids), and their JSON
  holds only what it asked for (references, digests, sizes, states).
- It is bounded: a body of at most ``MAX_BODY`` bytes, the prewarmer's limits on images and
  platforms, at most ``MAX_RUNNING`` peer-submitted jobs at once (then 429), at most
  ``MAX_KEPT`` ids remembered.
- The same token middleware as the pull paths (401 and nothing else without a current token).

The job runs outside the peer request's context: its fills ask the blob's owner first, as a
local pull would. A request from a peer is never *forwarded*, but this job is this member's
own prewarm, and asking the owner is what makes a cluster prewarm one upstream fetch per blob.
"""

from __future__ import annotations

import json
from collections import OrderedDict

from aiohttp import web

from cachesvc.cluster.origin import PEER_REQUEST
from cachesvc.cluster.peerclient import PREWARM_PATH
from cachesvc.errors import AdminError, CachesvcError, NotFound
from cachesvc.ops.jobs import Job
from cachesvc.ops.prewarm import Prewarmer

__all__ = ["MAX_RUNNING", "PeerPrewarm", "add_prewarm_routes"]

MAX_BODY = 128 * 1024
MAX_RUNNING = 8
MAX_KEPT = 256
_KEYS = {"images", "platforms"}


class PeerPrewarm:
    """The jobs peers submitted here, by id (only these are visible to peers)."""

    def __init__(self, prewarmer: Prewarmer) -> None:
        self._prewarmer = prewarmer
        self._ids: OrderedDict[str, None] = OrderedDict()

    def submit(self, images: list[str], platforms: list[str] | None) -> Job:
        """Start this member's part; AdminError (400/429) when it may not run."""
        running = sum(1 for job_id in self._ids if not self._finished(job_id))
        if running >= MAX_RUNNING:
            raise _TooMany(f"{running} prewarm jobs from peers are running here; retry later")
        marker = PEER_REQUEST.set(False)  # the job's task copies this context
        try:
            job = self._prewarmer.submit(images, platforms, pin=False)
        finally:
            PEER_REQUEST.reset(marker)
        self._ids[job.id] = None
        while len(self._ids) > MAX_KEPT:
            self._ids.popitem(last=False)
        return job

    def get(self, job_id: str) -> Job:
        """A peer-submitted job (NotFound for any other id, including admin-submitted ones)."""
        if job_id not in self._ids:
            raise NotFound(f"no prewarm job {job_id[:40]!r} submitted by a peer")
        return self._prewarmer.get(job_id)

    def cancel(self, job_id: str) -> Job:
        """Cancel a peer-submitted job."""
        self.get(job_id)
        return self._prewarmer.cancel(job_id)

    def _finished(self, job_id: str) -> bool:
        try:
            return self._prewarmer.get(job_id).finished is not None
        except NotFound:
            return True


class _TooMany(AdminError):
    status = 429


_KEY = web.AppKey("peer_prewarm", PeerPrewarm)


def _error(exc: CachesvcError) -> web.Response:
    status = exc.status if isinstance(exc, AdminError) else 400
    return web.json_response({"error": {"message": str(exc)[:1000]}}, status=status)


async def _body(request: web.Request) -> tuple[list[str], list[str] | None]:
    if request.content_length is None or request.content_length > MAX_BODY:
        raise AdminError(f"expected a JSON body of at most {MAX_BODY} bytes with a length")
    try:
        data = json.loads(await request.content.readexactly(request.content_length))
    except (ValueError, RecursionError, EOFError):
        raise AdminError("expected a JSON object body") from None
    if not isinstance(data, dict) or not set(data) <= _KEYS:
        raise AdminError(f"expected a JSON object with only {sorted(_KEYS)}")
    images, platforms = data.get("images"), data.get("platforms")
    for name, value in (("images", images), ("platforms", platforms)):
        if value is not None and (
            not isinstance(value, list) or not all(isinstance(v, str) for v in value)
        ):
            raise AdminError(f"{name} must be a list of strings")
    return list(images or []), list(platforms) if platforms else None


async def post_prewarm(request: web.Request) -> web.Response:
    """Start this member's part of a cluster prewarm; 202 with its job."""
    try:
        images, platforms = await _body(request)
        job = request.app[_KEY].submit(images, platforms)
    except CachesvcError as exc:
        return _error(exc)
    return web.json_response(job.to_json(), status=202)


async def get_prewarm(request: web.Request) -> web.Response:
    """A peer-submitted job's progress."""
    try:
        job = request.app[_KEY].get(request.match_info["id"])
    except CachesvcError as exc:
        return _error(exc)
    return web.json_response(job.to_json())


async def delete_prewarm(request: web.Request) -> web.Response:
    """Cancel a peer-submitted job."""
    try:
        job = request.app[_KEY].cancel(request.match_info["id"])
    except CachesvcError as exc:
        return _error(exc)
    return web.json_response(job.to_json(), status=202)


def add_prewarm_routes(app: web.Application, prewarm: PeerPrewarm) -> None:
    """Register the prewarm routes on the peer application (behind its token middleware)."""
    app[_KEY] = prewarm
    app.router.add_post(PREWARM_PATH, post_prewarm)
    app.router.add_get(PREWARM_PATH + "/{id}", get_prewarm)
    app.router.add_delete(PREWARM_PATH + "/{id}", delete_prewarm)
