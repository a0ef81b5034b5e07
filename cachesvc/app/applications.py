"""The aiohttp applications of the three listeners, wired to the running parts."""

from __future__ import annotations

from aiohttp import web

from cachesvc.app.parts import Parts
from cachesvc.cluster.node import Cluster
from cachesvc.config import Config
from cachesvc.metrics import Metrics
from cachesvc.ops.nodewiring import WiringMonitor
from cachesvc.server import admin_api as adminapi
from cachesvc.server import clients as client_policy
from cachesvc.server import health as admin
from cachesvc.server import mirror_api as handlers
from cachesvc.server import peer_api
from cachesvc.server.admin_cluster import add_cluster_route
from cachesvc.server.peer_prewarm import PeerPrewarm, add_prewarm_routes


def mirror_app(config: Config, parts: Parts, metrics: Metrics) -> web.Application:
    """The aiohttp application of the mirror API."""
    app = web.Application(middlewares=[handlers.errors_and_access_log])
    app[handlers.MIRROR_KEY] = parts.mirror
    app[handlers.METRICS_KEY] = metrics
    client_policy.install(app, config.clients.allow, metrics)  # before routing
    handlers.add_routes(app)
    return app


def admin_app(
    config: Config,
    parts: Parts,
    metrics: Metrics,
    ready: dict[str, bool],
    wiring: WiringMonitor,
) -> web.Application:
    """The aiohttp application of the admin listener (``ready`` is what /readyz reads)."""
    app = web.Application()
    app[admin.ADMIN_METRICS_KEY] = metrics
    app[admin.READY_KEY] = ready
    app[admin.WIRING_KEY] = wiring
    app[admin.STORAGE_TROUBLE_KEY] = parts.store.health.trouble
    admin.add_routes(app)
    add_cluster_route(app, parts.cluster)
    adminapi.add_routes(
        app,
        adminapi.AdminServices(
            prewarm=parts.prewarm,
            pins=parts.pins,
            inventory=parts.inventory,
            tokens=parts.tokens,
            metrics=metrics,
            default_registry=config.default_registry,
            checks=parts.checks,
            cluster_prewarm=parts.cluster_prewarm,
        ),
    )
    return app


def peer_app(cluster: Cluster, parts: Parts, metrics: Metrics) -> web.Application:
    """The aiohttp application of cluster mode's peer listener."""
    peers = peer_api.peer_app(cluster, parts.mirror, metrics)
    add_prewarm_routes(peers, PeerPrewarm(parts.prewarm))
    return peers
