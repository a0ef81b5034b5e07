"""The admin listener: /metrics, /healthz, /readyz (open, read-only)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from cachesvc.metrics import Metrics

ADMIN_METRICS_KEY = web.AppKey("admin_metrics", Metrics)
READY_KEY = web.AppKey("ready", dict)
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
    ``storage``: why), and the mirror listener is bound."""
    state = request.app[READY_KEY]
    trouble = request.app.get(STORAGE_TROUBLE_KEY)
    problem = await asyncio.to_thread(trouble) if state.get("ready") and trouble else None
    if problem is not None:  # a full or failing disk: not fit to take traffic
        return web.json_response({"status": "storage", "storage": problem}, status=503)
    if state.get("ready"):
        return web.json_response({"status": "ready"})
    return web.json_response(
        {"status": "starting" if not state.get("stopping") else "stopping"}, status=503
    )


def add_routes(app: web.Application) -> None:
    """Register the admin routes."""
    app.router.add_get("/metrics", metrics_handler)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
