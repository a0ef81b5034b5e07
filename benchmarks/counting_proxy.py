"""A counting hop: a tiny reverse proxy in front of the upstream registry.

Both caches fetch from the upstream through this hop, so the harness counts upstream GETs per
path from something neither cache controls, and both pay the same extra hop on a miss.
``GET /__hop__/counts`` returns ``{"GET /v2/...": n, "HEAD /v2/...": n}`` as JSON;
``POST /__hop__/reset`` clears the counts.

Runs as its own process (``python -m benchmarks.counting_proxy --port P --upstream URL``) so
that forwarding bytes never competes with the harness's own event loop.
"""

from __future__ import annotations

import argparse
import asyncio
from collections import Counter
from collections.abc import AsyncIterator

from aiohttp import ClientSession, ClientTimeout, TCPConnector, web

COUNTS_PATH = "/__hop__/counts"
RESET_PATH = "/__hop__/reset"
CHUNK = 1 << 20
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailers",
        "transfer-encoding",
        "upgrade",
        "host",
    }
)

COUNTS_KEY = web.AppKey("counts", Counter[str])
SESSION_KEY = web.AppKey("session", ClientSession)
UPSTREAM_KEY = web.AppKey("upstream", str)


async def _counts(request: web.Request) -> web.Response:
    counts: Counter[str] = request.app[COUNTS_KEY]
    return web.json_response(dict(counts))


async def _reset(request: web.Request) -> web.Response:
    request.app[COUNTS_KEY].clear()
    return web.Response(status=204)


async def _forward(request: web.Request) -> web.StreamResponse:
    request.app[COUNTS_KEY][f"{request.method} {request.path}"] += 1
    headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP_BY_HOP}
    body = request.content if request.can_read_body else None
    async with request.app[SESSION_KEY].request(
        request.method,
        request.app[UPSTREAM_KEY] + request.path_qs,
        headers=headers,
        data=body,
        allow_redirects=False,
        auto_decompress=False,
    ) as upstream:
        response = web.StreamResponse(status=upstream.status)
        for key, value in upstream.headers.items():
            if key.lower() not in HOP_BY_HOP:
                response.headers.add(key, value)
        await response.prepare(request)
        if request.method != "HEAD":
            async for chunk in upstream.content.iter_chunked(CHUNK):
                await response.write(chunk)
        await response.write_eof()
        return response


async def _session_ctx(app: web.Application) -> AsyncIterator[None]:
    session = ClientSession(
        connector=TCPConnector(limit=0),
        timeout=ClientTimeout(total=None, sock_connect=10),
    )
    app[SESSION_KEY] = session
    yield
    await session.close()


def make_app(upstream: str) -> web.Application:
    """The hop as an aiohttp application forwarding everything to ``upstream``."""
    app = web.Application(client_max_size=0)
    app[COUNTS_KEY] = Counter()
    app[UPSTREAM_KEY] = upstream.rstrip("/")
    app.cleanup_ctx.append(_session_ctx)
    app.router.add_get(COUNTS_PATH, _counts)
    app.router.add_post(RESET_PATH, _reset)
    app.router.add_route("*", "/{tail:.*}", _forward)
    return app


def main() -> None:
    """Serve the hop until terminated."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.counting_proxy")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--upstream", required=True, help="e.g. http://127.0.0.1:5001")
    args = parser.parse_args()
    try:
        import uvloop  # optional speed-up: the hop works without it

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    except ImportError:
        pass
    web.run_app(
        make_app(args.upstream), host="127.0.0.1", port=args.port, print=None, access_log=None
    )


if __name__ == "__main__":
    main()
