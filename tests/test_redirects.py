"""Blob GETs redirected to a CDN: followed inside the mirror, Authorization never leaves the
registry's origin, at most 5 hops, loops refused, Location never reused."""

from __future__ import annotations

import os
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import aiohttp
import pytest
from aiohttp import web

from cachesvc.app import Daemon
from tests.conftest import StartDaemon, blob_url, with_settings
from tests.fakes.auth import TokenService
from tests.fakes.registry import FakeRegistry


@pytest.fixture
async def mirror(fake: FakeRegistry, start_daemon: StartDaemon) -> AsyncIterator[Daemon]:
    """cachesvc in front of ``fake``; its CDN is on another loopback host, which the address
    rule allows only with ``redirect_private`` (tests/test_hostile_upstream_redirects.py)."""
    async with with_settings(start_daemon, fake, redirect_private=True) as daemon:
        yield daemon


def _second_loopback() -> str:
    """127.0.0.2 where the kernel routes it (Linux does), else 127.0.0.1 on another port."""
    try:
        with socket.socket() as sock:
            sock.bind(("127.0.0.2", 0))
        return "127.0.0.2"
    except OSError:
        return "127.0.0.1"


@dataclass
class Cdn:
    """Serves blobs at ``/cdn/<digest>``; ``/hop/<n>/<digest>`` redirects n more times first,
    ``/loop/<digest>`` redirects to itself. Records the Authorization of every request."""

    blobs: dict[str, bytes]
    url: str = ""
    seen: list[tuple[str, str | None]] = field(default_factory=list)
    fail_next: int = 0

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/cdn/{digest}", self._blob)
        app.router.add_get("/hop/{n}/{digest}", self._hop)
        app.router.add_get("/loop/{digest}", self._loop)
        return app

    def _record(self, request: web.Request) -> None:
        self.seen.append((request.path, request.headers.get("Authorization")))

    async def _blob(self, request: web.Request) -> web.Response:
        self._record(request)
        if self.fail_next:
            self.fail_next -= 1
            return web.Response(status=500)
        return web.Response(body=self.blobs[request.match_info["digest"]])

    async def _hop(self, request: web.Request) -> web.Response:
        self._record(request)
        n, digest = int(request.match_info["n"]), request.match_info["digest"]
        target = f"/hop/{n - 1}/{digest}" if n > 1 else f"/cdn/{digest}"
        raise web.HTTPFound(target + "?X-Amz-Signature=sig-" + str(n))

    async def _loop(self, request: web.Request) -> web.Response:
        self._record(request)
        raise web.HTTPTemporaryRedirect(request.path)


@asynccontextmanager
async def serving(cdn: Cdn) -> AsyncIterator[Cdn]:
    runner = web.AppRunner(cdn.app(), access_log=None, shutdown_timeout=0.5)
    await runner.setup()
    host = _second_loopback()
    site = web.TCPSite(runner, host, 0)
    await site.start()
    cdn.url = f"http://{host}:{runner.addresses[0][1]}"
    try:
        yield cdn
    finally:
        await runner.cleanup()


async def fetch(http: aiohttp.ClientSession, daemon: Daemon, digest: str) -> tuple[int, bytes]:
    async with http.get(blob_url(daemon, digest)) as resp:
        return resp.status, await resp.read()


async def test_a_cdn_redirect_gets_the_bytes_and_never_the_authorization(
    fake: FakeRegistry, tokens: TokenService, mirror: Daemon, http: aiohttp.ClientSession
) -> None:
    fake.gate = tokens  # the registry wants a Bearer token, so cachesvc sends Authorization
    data = os.urandom(300_000)
    digest = fake.add_blob(data)
    async with serving(Cdn({digest: data})) as cdn:
        fake.faults.redirect_location = f"{cdn.url}/hop/1/{digest}"
        assert await fetch(http, mirror, digest) == (200, data)
    assert any(a and a.startswith("Bearer ") for a in fake.auth_seen)
    assert [path for path, _ in cdn.seen] == [f"/hop/1/{digest}", f"/cdn/{digest}"]
    assert [auth for _, auth in cdn.seen] == [None, None]


@pytest.mark.parametrize(("hops", "expected"), [(5, 200), (6, 502)])
async def test_at_most_five_redirect_hops(
    hops: int, expected: int, fake: FakeRegistry, mirror: Daemon, http: aiohttp.ClientSession
) -> None:
    data = os.urandom(1000)
    digest = fake.add_blob(data)
    async with serving(Cdn({digest: data})) as cdn:
        # registry -> /hop/(hops-1) -> ... -> /hop/1 -> /cdn: ``hops`` redirects in all.
        fake.faults.redirect_location = f"{cdn.url}/hop/{hops - 1}/{digest}"
        status, body = await fetch(http, mirror, digest)
    assert status == expected
    if status == 200:
        assert body == data
    else:
        assert b"more than 5 redirects" in body
        assert b"X-Amz-Signature" not in body  # signed URLs stay out of error bodies


async def test_a_redirect_loop_is_an_error_not_a_hang(
    fake: FakeRegistry, mirror: Daemon, http: aiohttp.ClientSession
) -> None:
    digest = fake.add_blob(b"loop")
    async with serving(Cdn({})) as cdn:
        fake.faults.redirect_location = f"{cdn.url}/loop/{digest}"
        status, body = await fetch(http, mirror, digest)
    assert status == 502
    assert b"redirect loop" in body


async def test_the_location_is_never_cached(
    fake: FakeRegistry, mirror: Daemon, http: aiohttp.ClientSession
) -> None:
    data = os.urandom(1000)
    digest = fake.add_blob(data)
    async with serving(Cdn({digest: data}, fail_next=1)) as cdn:
        fake.faults.redirect_location = f"{cdn.url}/cdn/{digest}"
        assert (await fetch(http, mirror, digest))[0] == 502  # the CDN failed once
        assert await fetch(http, mirror, digest) == (200, data)
    assert fake.count("GET", "/blobs/") == 2  # the second fill asked the registry again
