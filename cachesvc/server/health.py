"""The admin listener: /metrics, /healthz, /readyz (open, read-only)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from cachesvc.metrics import Metrics
from cachesvc.ops.nodewiring import WiringMonitor

ADMIN_METRICS_KEY = web.AppKey("admin_metrics", Metrics)
READY_KEY = web.AppKey("ready", dict)
WIRING_KEY = web.AppKey("wiring", WiringMonitor)
# Why the storage cannot be served from now (None: it can); StorageHealth.trouble.
STORAGE_TROUBLE_KEY: web.AppKey[Callable[[], str | None]] = web.AppKey("storage_trouble")


async def metrics_handler(request: web.Request) -> web.Response:
    """Prometheus exposition of the injected registry."""
    body = generate_latest(request.app[ADMIN_METRICS_KEY].registry)
    response = web.Response(body=body)
    response.headers["Content-Type"] = CONTENT_TYPE_LATEST
    return response


async def healthz(request: web.Request) -> web.Response:
    """Liveness: the event loop answers."""
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    """Readiness: the store is open and healthy (a full or failing disk is 503 with
    ``storage``: why), the mirror listener is bound, and containerd on this node is wired
    to it (when checked: see ``containerd_readiness``)."""
    state = request.app[READY_KEY]
    trouble = request.app.get(STORAGE_TROUBLE_KEY)
    problem = await asyncio.to_thread(trouble) if state.get("ready") and trouble else None
    if problem is not None:  # a full or failing disk: not fit to take traffic
        return web.json_response({"status": "storage", "storage": problem}, status=503)
    if state.get("ready"):
        return containerd_readiness(request.app, {"status": "ready"})
    return web.json_response(
        {"status": "starting" if not state.get("stopping") else "stopping"}, status=503
    )


def containerd_readiness(app: web.Application, body: dict[str, object]) -> web.Response:
    """Add the ``containerd`` detail; a checked node that is not wired is not ready.

    Why fail readiness rather than only report it: on a node whose containerd ignores the
    cache, "Ready" is the lie issue 12 is about (pods Ready, every pull bypassing the
    cache). Readiness of this hostNetwork DaemonSet routes no traffic (containerd reaches
    the cache on loopback, whatever its readiness), so NotReady costs nothing but shows:
    ``kubectl get pods`` says 0/1, ``kubectl rollout status`` stops at maxUnavailable
    instead of rolling a broken wiring to every node, and the detail says what is missing.
    In cluster mode the headless Service lists ready pods only, so such a node also leaves
    the peer ring: the smaller loss, on a node whose own pulls skip the cache anyway.
    Unchecked (``containerd.config`` unset, e.g. outside Kubernetes) stays ready.
    """
    monitor = app.get(WIRING_KEY)
    if monitor is None:
        return web.json_response(body)
    report = monitor.report
    body = {**body, "containerd": report.detail()}
    if report.checked and not report.wired:
        return web.json_response({**body, "status": "not wired"}, status=503)
    return web.json_response(body)


def add_routes(app: web.Application) -> None:
    """Register the admin routes."""
    app.router.add_get("/metrics", metrics_handler)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
