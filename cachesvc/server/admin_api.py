"""The /admin/v1 API on the admin listener, behind a Bearer token.

::

    POST   /admin/v1/prewarm          {"images": [...], "platforms": [...], "pin": bool} -> 202
                                      "scope": "cluster": every member (ops.clusterprewarm)
    GET    /admin/v1/jobs             every job still kept
    GET    /admin/v1/jobs/<id>        one job: per-image state, bytes/blobs done/total
    DELETE /admin/v1/jobs/<id>        cancel it
    GET    /admin/v1/pins             the pin list
    DELETE /admin/v1/pins/<ref>       unpin
    GET    /admin/v1/images           the inventory (?registry=&repository=&tag=&platform=&pinned=)
    DELETE /admin/v1/images/<ref>     purge an image and the blobs no other image uses
    POST   /admin/v1/verify           check every stored file -> 202 {"id"}; see /jobs/<id>

The tokens are the lines of ``admin.token_file`` (``cachesvc.tokenfile.TokenFile``: any
line is accepted, for a rotation's overlap; re-read when the file changes, kubelet's
``..data`` swap included, so rotating needs no restart; a briefly missing or empty file
keeps the last tokens). Each is compared in constant time. Without a token file the API
answers 403 and says how to enable it; a missing or wrong token is 401. Tokens are never
logged. The handlers translate only: every action is one call on the domain object.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from aiohttp import web

from cachesvc.errors import AdminError, CachesvcError, NotFound
from cachesvc.metrics import Metrics
from cachesvc.oci.reference import parse_reference
from cachesvc.ops.clusterprewarm import ClusterJob, ClusterPrewarm
from cachesvc.ops.inventory import Inventory
from cachesvc.ops.jobs import Job
from cachesvc.ops.prewarm import Prewarmer
from cachesvc.ops.storecheck import StoreChecks
from cachesvc.store.pins import Pins
from cachesvc.tokenfile import TokenFile

log = logging.getLogger("cachesvc.admin")

PREFIX = "/admin/v1"
MAX_BODY = 1024 * 1024
HOW_TO_ENABLE = (
    "the admin API is disabled: write a secret token to a file readable only by cachesvc "
    "(e.g. `head -c 32 /dev/urandom | base64 > /etc/cachesvc/admin-token; chmod 600 "
    "/etc/cachesvc/admin-token`), set `admin.token_file` to its path in the configuration "
    "and restart; then send `Authorization: Bearer <token>`"
)


@dataclass(frozen=True, slots=True)
class AdminServices:
    """What the admin routes act on."""

    prewarm: Prewarmer
    pins: Pins
    inventory: Inventory
    tokens: TokenFile | None  # admin.token_file; None: the API is disabled (403)
    metrics: Metrics
    default_registry: str | None
    checks: StoreChecks | None = None  # verify jobs (issue 11)
    cluster_prewarm: ClusterPrewarm | None = None  # cluster mode: "scope": "cluster"


SERVICES_KEY = web.AppKey("admin_services", AdminServices)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _error(status: int, code: str, message: str) -> web.Response:
    return web.json_response({"error": {"code": code, "message": message}}, status=status)


@web.middleware
async def auth_and_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Bearer auth for /admin/v1 and AdminError -> JSON error answers."""
    if not request.path.startswith(PREFIX + "/") and request.path != PREFIX:
        return await handler(request)
    services = request.app[SERVICES_KEY]
    counter = services.metrics.admin_requests
    tokens = services.tokens
    if tokens is None:
        counter.labels("disabled").inc()
        return _error(403, "DISABLED", HOW_TO_ENABLE)
    scheme, _, given = request.headers.get("Authorization", "").partition(" ")
    presented = given.strip().encode("utf-8", "surrogateescape")  # header bytes as sent
    if scheme.lower() != "bearer" or not tokens.accepts(presented):
        counter.labels("unauthorized").inc()
        response = _error(401, "UNAUTHORIZED", "send Authorization: Bearer <admin token>")
        response.headers["WWW-Authenticate"] = 'Bearer realm="cachesvc-admin"'
        return response
    try:
        answer = await handler(request)
    except AdminError as exc:
        counter.labels("error").inc()
        return _error(exc.status, type(exc).__name__.upper(), str(exc))
    except CachesvcError as exc:  # a bad reference, digest or name
        counter.labels("error").inc()
        return _error(400, "INVALID", str(exc))
    counter.labels("ok").inc()
    return answer


async def _json_body(request: web.Request) -> dict[str, object]:
    if request.content_length is not None and request.content_length > MAX_BODY:
        raise AdminError("request body too large")
    body = bytearray()
    while chunk := await request.content.read(65536):  # read() alone returns what is buffered
        body += chunk
        if len(body) > MAX_BODY:
            raise AdminError("request body too large")
    try:
        data = json.loads(body)
    except (ValueError, RecursionError):
        raise AdminError("expected a JSON object body") from None
    if not isinstance(data, dict):
        raise AdminError("expected a JSON object body")
    return data


def _strings(data: dict[str, object], key: str) -> list[str] | None:
    value = data.get(key)
    if value is None:
        return None
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise AdminError(f"{key} must be a list of strings")
    return [str(v) for v in value]


async def post_prewarm(request: web.Request) -> web.Response:
    """Start a prewarm job; 202 with its id."""
    data = await _json_body(request)
    images = _strings(data, "images") or []
    pin = data.get("pin", False)
    if not isinstance(pin, bool):
        raise AdminError("pin must be true or false")
    services = request.app[SERVICES_KEY]
    platforms = _strings(data, "platforms")
    job: Job | ClusterJob
    if _scope(data, services) == "cluster":
        assert services.cluster_prewarm is not None
        job = services.cluster_prewarm.submit(images, platforms, pin)
    else:
        job = services.prewarm.submit(images, platforms, pin)
    return web.json_response(
        {"id": job.id, "url": f"{PREFIX}/jobs/{job.id}", **job.to_json()}, status=202
    )


def _scope(data: dict[str, object], services: AdminServices) -> str:
    """``node`` (the default) or ``cluster`` (cluster mode only)."""
    scope = data.get("scope", "node")
    if scope not in ("node", "cluster"):
        raise AdminError('scope must be "node" or "cluster"')
    if scope == "cluster" and services.cluster_prewarm is None:
        raise AdminError("scope cluster needs cluster mode: this daemon has no cluster: section")
    return str(scope)


async def list_jobs(request: web.Request) -> web.Response:
    """Every kept job (cluster jobs too), newest first."""
    services = request.app[SERVICES_KEY]
    jobs: list[Job | ClusterJob] = list(services.prewarm.list())
    if services.cluster_prewarm is not None:
        jobs += services.cluster_prewarm.list()
    jobs.sort(key=lambda j: j.created, reverse=True)
    return web.json_response({"jobs": [j.to_json() for j in jobs]})


def _cluster_job(services: AdminServices, job_id: str) -> ClusterJob | None:
    if services.cluster_prewarm is None:
        return None
    return services.cluster_prewarm.get(job_id)


async def get_job(request: web.Request) -> web.Response:
    """One job (prewarm, cluster prewarm or verify; a cluster job shows every member)."""
    services, job_id = request.app[SERVICES_KEY], request.match_info["id"]
    check = services.checks.find(job_id) if services.checks else None
    if check is not None:
        return web.json_response(check.to_json())
    job = _cluster_job(services, job_id) or services.prewarm.get(job_id)
    return web.json_response(job.to_json())


async def post_verify(request: web.Request) -> web.Response:
    """Start a whole-store check; 202 with its job id."""
    checks = request.app[SERVICES_KEY].checks
    if checks is None:
        raise NotFound("verify is not available in this daemon")
    job = checks.submit()
    return web.json_response(
        {"id": job.id, "url": f"{PREFIX}/jobs/{job.id}", **job.to_json()}, status=202
    )


async def cancel_job(request: web.Request) -> web.Response:
    """Cancel a job (a cluster job: every member's part)."""
    services, job_id = request.app[SERVICES_KEY], request.match_info["id"]
    job: Job | ClusterJob
    if _cluster_job(services, job_id) is not None and services.cluster_prewarm is not None:
        job = services.cluster_prewarm.cancel(job_id)
    else:
        job = services.prewarm.cancel(job_id)
    return web.json_response(job.to_json(), status=202)


async def list_pins(request: web.Request) -> web.Response:
    """The pin list."""
    pins = request.app[SERVICES_KEY].pins.list()
    return web.json_response({"pins": [p.to_json() for p in pins]})


async def delete_pin(request: web.Request) -> web.Response:
    """Unpin every pin the reference names."""
    services = request.app[SERVICES_KEY]
    reference = parse_reference(
        request.match_info["ref"], services.prewarm.router, services.default_registry
    )
    removed = services.pins.remove(reference)
    if not removed:
        raise NotFound(f"{reference} is not pinned")
    return web.json_response({"unpinned": [p.to_json() for p in removed]})


async def list_images(request: web.Request) -> web.Response:
    """The inventory, with filters from the query string."""
    known = ("registry", "repository", "tag", "platform", "pinned", "digest")
    filters = {k: v for k, v in request.query.items() if k in known}
    rows = await request.app[SERVICES_KEY].inventory.images(filters)
    return web.json_response({"images": rows})


async def delete_image(request: web.Request) -> web.Response:
    """Purge one image."""
    services = request.app[SERVICES_KEY]
    reference = parse_reference(
        request.match_info["ref"], services.prewarm.router, services.default_registry
    )
    return web.json_response(await services.inventory.purge(reference))


def add_routes(app: web.Application, services: AdminServices) -> None:
    """Register /admin/v1 on the admin application (its middleware does the auth)."""
    app[SERVICES_KEY] = services
    app.middlewares.append(auth_and_errors)
    app.router.add_post(f"{PREFIX}/prewarm", post_prewarm)
    app.router.add_get(f"{PREFIX}/jobs", list_jobs)
    app.router.add_get(f"{PREFIX}/jobs/{{id}}", get_job)
    app.router.add_delete(f"{PREFIX}/jobs/{{id}}", cancel_job)
    app.router.add_get(f"{PREFIX}/pins", list_pins)
    app.router.add_delete(f"{PREFIX}/pins/{{ref:.+}}", delete_pin)
    app.router.add_get(f"{PREFIX}/images", list_images)
    app.router.add_delete(f"{PREFIX}/images/{{ref:.+}}", delete_image)
    app.router.add_post(f"{PREFIX}/verify", post_verify)
    app.router.add_route("*", f"{PREFIX}/{{tail:.*}}", _unknown)


async def _unknown(request: web.Request) -> web.Response:
    raise NotFound(f"no admin route {request.method} {request.path[:200]}")
