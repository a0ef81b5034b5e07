"""``GET /admin/v1/cluster``: how this daemon sees the cluster (behind the admin token).

::

    GET /admin/v1/cluster                    self, members, membership age, peers + state
    GET /admin/v1/cluster?digest=sha256:...  the same plus that digest's owner and ranking

Registered before ``cachesvc.server.admin_api``'s routes (whose catch-all answers unknown
paths), so its middleware does the auth and error mapping for it too.
"""

from __future__ import annotations

from aiohttp import web

from cachesvc.cluster.node import Cluster
from cachesvc.errors import NotFound
from cachesvc.oci import Digest

__all__ = ["add_cluster_route"]

PATH = "/admin/v1/cluster"
_CLUSTER_KEY = web.AppKey("admin_cluster", Cluster)
_OFF = "cluster mode is off: this daemon's configuration has no cluster: section"


async def get_cluster(request: web.Request) -> web.Response:
    """The cluster status; ``?digest=`` adds the owner and fallback order of that digest."""
    cluster = request.app.get(_CLUSTER_KEY)
    if cluster is None:
        raise NotFound(_OFF)
    digest = request.query.get("digest")
    if digest is not None:
        digest = str(Digest.parse(digest))  # DigestInvalid: a 400 from the admin middleware
    return web.json_response(cluster.status(digest))


def add_cluster_route(app: web.Application, cluster: Cluster | None) -> None:
    """Register the route (it answers 404 naming why when cluster mode is off)."""
    if cluster is not None:
        app[_CLUSTER_KEY] = cluster
    app.router.add_get(PATH, get_cluster)
