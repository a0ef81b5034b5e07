"""What a fresh upstream connection per manifest costs (cachesvc.upstream.session).

``python -m benchmarks.upstream_connections [--requests 300] [--reps 5]`` serves a 2 KiB
manifest from a local aiohttp server over TLS (a trustme CA) and over plain http, and
times ``--requests`` GETs through a pooled connector and through one with
``force_close=True`` (what cachesvc's ``single`` session uses for answers read whole),
one at a time and 16 at once, the two interleaved ``--reps`` times. Prints the median
time per request of each and the difference, which is the client side of a TCP (and TLS)
handshake on loopback: a remote registry adds one round trip for TCP and one for TLS 1.3
(two for TLS 1.2) per request on top. Loopback only.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import ssl
import statistics
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import aiohttp
import trustme
from aiohttp import web

MANIFEST = json.dumps({"schemaVersion": 2, "layers": [{"size": i} for i in range(80)]}).encode()


@asynccontextmanager
async def _served(context: ssl.SSLContext | None) -> AsyncIterator[str]:
    async def manifest(_: web.Request) -> web.Response:
        return web.Response(body=MANIFEST, content_type="application/json")

    app = web.Application()
    app.router.add_get("/v2/team/app/manifests/v1", manifest)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=context)
    await site.start()
    scheme = "https" if context is not None else "http"
    try:
        yield f"{scheme}://127.0.0.1:{site.port}/v2/team/app/manifests/v1"
    finally:
        await runner.cleanup()


async def _run(url: str, client: ssl.SSLContext, *, fresh: bool, n: int, width: int) -> float:
    """Seconds per request for ``n`` GETs, ``width`` at a time."""
    connector = aiohttp.TCPConnector(ssl=client, force_close=fresh, limit_per_host=64)
    async with aiohttp.ClientSession(connector=connector) as http:

        async def one() -> None:
            async with http.get(url) as resp:
                assert await resp.read() == MANIFEST

        await one()  # warm: the pooled run starts with a connection, as cachesvc does
        started = time.perf_counter()
        for _ in range(n // width):
            await asyncio.gather(*(one() for _ in range(width)))
        return (time.perf_counter() - started) / (n // width * width)


async def _measure(args: argparse.Namespace) -> None:
    ca = trustme.CA()
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(server)
    client = ssl.create_default_context()
    ca.configure_trust(client)
    print(f"{args.requests} GETs of a {len(MANIFEST)} B manifest, median of {args.reps} reps")
    print("transport width   pooled ms/req   fresh ms/req   fresh - pooled")
    for name, context in (("tls", server), ("http", None)):
        async with _served(context) as url:
            for width in (1, 16):
                times: dict[bool, list[float]] = {False: [], True: []}
                for _ in range(args.reps):
                    for fresh in (False, True):
                        seconds = await _run(url, client, fresh=fresh, n=args.requests, width=width)
                        times[fresh].append(seconds)
                pooled = statistics.median(times[False]) * 1000
                fresh_ms = statistics.median(times[True]) * 1000
                print(
                    f"{name:9} {width:5}   {pooled:13.3f}   {fresh_ms:12.3f}   "
                    f"{fresh_ms - pooled:+.3f} ms ({fresh_ms / pooled:.1f}x)"
                )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.upstream_connections")
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--reps", type=int, default=5)
    asyncio.run(_measure(parser.parse_args(argv)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
