"""The peer API: the cluster's own listener (``cluster.listen``), OCI pull paths only.

What it offers, and nothing else (issue 13, Security):

- ``GET``/``HEAD`` ``/v2/<name>/blobs/<digest>`` and ``/v2/<name>/manifests/<reference>``
  with ``?ns=<registry>``, for configured registries only (the mirror's router decides);
  blobs by digest only. No tag lists, referrers, files or admin operations.
- ``Authorization: Bearer <token>`` with a line of ``cluster.token_file`` (compared in
  constant time by ``TokenFile.accepts``; re-read on change, so rotation needs no
  restart). Without it or with a wrong one: 401 with an empty body. Tokens are never logged
  (the access log has no headers).
- Requests here are marked (``cachesvc.cluster.origin``): the mirror serves them from its
  store or a fill, or fills from upstream itself, and never asks another peer.
- Fan-out (``cluster.fanout``): beyond that many concurrent streams of one blob, the asking
  peer (``X-Cachesvc-Peer``) is redirected (307) to a member that holds the blob.

The handlers are the mirror API's (``cachesvc.server.mirror_api``): one definition of how a
blob or manifest is answered, whichever listener it came in on.
"""

from __future__ import annotations

from aiohttp import web

from cachesvc.cluster.node import Cluster
from cachesvc.cluster.origin import PEER_REQUEST
from cachesvc.cluster.peerclient import PEER_HEADER
from cachesvc.config.peeraddress import PeerAddress
from cachesvc.errors import RegistryError, Unsupported
from cachesvc.metrics import Metrics
from cachesvc.mirror.facade import Mirror
from cachesvc.oci import parse_api_path
from cachesvc.server import mirror_api as handlers

__all__ = ["CLUSTER_KEY", "add_routes", "peer_app"]

CLUSTER_KEY = web.AppKey("cluster", Cluster)
_RESULTS = {"hit": "hit", "miss": "fill", "coalesced": "fill", "stale": "hit"}


@web.middleware
async def token_required(request: web.Request, handler: handlers.Handler) -> web.StreamResponse:
    """401 and nothing else unless the request carries a current peer token."""
    cluster = request.app[CLUSTER_KEY]
    scheme, _, given = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not cluster.tokens.accepts(given.strip()):
        request.app[handlers.METRICS_KEY].peer_requests_by("unauthorized").inc()
        return web.Response(status=401)
    marker = PEER_REQUEST.set(True)
    try:
        return await handler(request)
    finally:
        PEER_REQUEST.reset(marker)


async def peer_api(request: web.Request) -> web.StreamResponse:
    """A pull from a peer: manifests and blobs only, blobs within the fan-out."""
    if request.method not in ("GET", "HEAD"):
        raise Unsupported("the peer API serves pulls only")
    path = parse_api_path(request.match_info["tail"])
    if path.kind not in ("blobs", "manifests"):
        raise Unsupported("the peer API serves manifests and blobs only")
    metrics = request.app[handlers.METRICS_KEY]
    if path.kind == "blobs" and request.method == "GET":
        return await _blob_within_fanout(request, path.reference, metrics)
    return await _counted(request, metrics)


async def _counted(request: web.Request, metrics: Metrics) -> web.StreamResponse:
    try:
        response = await handlers.api(request)
    except RegistryError:
        metrics.peer_requests_by("error").inc()
        raise
    audit = request[handlers.AUDIT_KEY]
    result = _RESULTS.get(audit.cache or "", "error")
    if audit.hung_up:
        result = "error"
    metrics.peer_requests_by(result).inc()
    metrics.peer_bytes_sent.inc(audit.bytes)
    return response


async def _blob_within_fanout(
    request: web.Request, digest: str, metrics: Metrics
) -> web.StreamResponse:
    cluster = request.app[CLUSTER_KEY]
    asker = _asker(request)
    slot = cluster.fanout.enter(digest, asker, cluster.usable)
    if isinstance(slot, PeerAddress):
        metrics.peer_requests_by("redirected").inc()
        scheme = "https" if cluster.config.tls is not None else "http"
        raise web.HTTPTemporaryRedirect(f"{scheme}://{slot}{request.path_qs}")
    completed = False
    try:
        response = await _counted(request, metrics)
        audit = request[handlers.AUDIT_KEY]
        completed = audit.cache not in (None, "error") and not audit.hung_up
        return response
    finally:
        cluster.fanout.leave(slot, completed=completed)


def _asker(request: web.Request) -> PeerAddress | None:
    """The asking member's advertised address, if it is a member (a redirect target)."""
    try:
        peer = PeerAddress.parse(request.headers.get(PEER_HEADER, ""))
    except ValueError:
        return None
    return peer if request.app[CLUSTER_KEY].is_member(peer) else None


def peer_app(cluster: Cluster, mirror: Mirror, metrics: Metrics) -> web.Application:
    """The aiohttp application of the peer listener."""
    app = web.Application(middlewares=[token_required, handlers.errors_and_access_log])
    app[CLUSTER_KEY] = cluster
    app[handlers.MIRROR_KEY] = mirror
    app[handlers.METRICS_KEY] = metrics
    add_routes(app)
    return app


def add_routes(app: web.Application) -> None:
    """Register the peer routes on ``app`` (``/v2/`` answers, so peers can probe it)."""
    app.router.add_route("GET", "/v2/", handlers.api_root)
    app.router.add_route("*", "/v2/{tail:.+}", peer_api)
