"""``clients.allow`` on the mirror API: a client outside the networks gets 403 before routing.

The TCP peer address is the only truth: ``X-Forwarded-For`` and friends are the client's own
word and are never read. The check runs inside the access-log middleware, so every refusal
writes its access line (``policy: clients``) like any other answer.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from aiohttp import web

from cachesvc.errors import PolicyDenied
from cachesvc.metrics import Metrics
from cachesvc.policy.clients import ClientAllowList

__all__ = ["install", "peer_host", "transport_host"]

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def transport_host(transport: asyncio.BaseTransport | None) -> str:
    """The connected socket's peer address ("" when the transport is already gone)."""
    peer = transport.get_extra_info("peername") if transport is not None else None
    return str(peer[0]) if isinstance(peer, tuple) and peer else ""


def peer_host(request: web.Request) -> str:
    """The peer address of ``request``'s connection (see ``transport_host``)."""
    return transport_host(request.transport)


def install(app: web.Application, allow: ClientAllowList | None, metrics: Metrics) -> None:
    """Refuse clients outside ``allow`` on every route of ``app`` (None: allow everyone).

    Appended after the access-log middleware, so it runs inside it.
    """
    if allow is None:
        return

    @web.middleware
    async def only_allowed_clients(request: web.Request, handler: Handler) -> web.StreamResponse:
        host = peer_host(request)
        if not allow.allows(host):
            metrics.policy_client_refusals.inc()
            raise PolicyDenied(
                "clients", f"client {host or 'unknown'} is not in clients.allow of this mirror"
            )
        return await handler(request)

    app.middlewares.append(only_allowed_clients)
