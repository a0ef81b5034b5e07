"""The admin client reads answers bounded (cachesvc.ops.adminclient): an --admin-url that
points at something else than cachesvc (an endless download, a huge declared length) is a
clear error naming the URL, not a CLI that grows until it is killed."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest
from aiohttp import web

from cachesvc.errors import AdminUnavailable
from cachesvc.ops.adminclient import EXIT_ADMIN, AdminClient
from tests.fakes.registry import serve

LIMIT = 256 * 1024


async def endless(request: web.Request) -> web.StreamResponse:
    """JSON-looking bytes for ever (until the client hangs up)."""
    response = web.StreamResponse(headers={"Content-Type": "application/json"})
    await response.prepare(request)
    await response.write(b'{"pins": [')
    chunk = b'"sha256:0000000000000000000000000000000000000000000000000000000000000000",' * 512
    while True:
        await response.write(chunk)
        await asyncio.sleep(0)


async def declared(request: web.Request) -> web.StreamResponse:
    """A Content-Length far over the limit (the body never needs to come)."""
    response = web.StreamResponse(headers={"Content-Length": str(10 * LIMIT)})
    await response.prepare(request)
    await response.write(b"x" * 1024)
    await asyncio.sleep(3600)  # the client must decide from the header alone
    return response


async def small(request: web.Request) -> web.Response:
    return web.json_response({"pins": []})


def app() -> web.Application:
    application = web.Application()
    application.router.add_get("/admin/v1/endless", endless)
    application.router.add_get("/metrics", endless)
    application.router.add_get("/admin/v1/declared", declared)
    application.router.add_get("/admin/v1/pins", small)
    return application


async def test_answers_past_the_limit_are_a_clear_error() -> None:
    async with serve(app()) as url, aiohttp.ClientSession() as session:
        client = AdminClient(url, "token", max_answer=LIMIT)
        assert await client.call(session, "GET", "/admin/v1/pins") == {"pins": []}
        for path in ("/admin/v1/endless", "/admin/v1/declared"):
            with pytest.raises(AdminUnavailable) as caught:
                await client.call(session, "GET", path)
            assert caught.value.status == EXIT_ADMIN
            assert str(caught.value) == (
                f"the answer of {url}{path} is over {LIMIT} bytes: that is not a cachesvc "
                "admin listener (check --admin-url)"
            )
        with pytest.raises(AdminUnavailable, match=f"/metrics is over {LIMIT} bytes"):
            await client.open_text(session, "/metrics")
