"""Hostile upstreams for the hardening tests (issue 11): what a malicious or broken registry,
token service or CDN does that ``FakeRegistry`` cannot.

- :class:`HostileTokenService`: a token service (and the gate that checks its tokens) whose
  answers can be an endless body, a huge token, or a redirect to another server.
- :class:`Recorder`: any path, any method; records what arrived (method, path, Authorization,
  body) and answers a token JSON, so a credential that was sent there is visible.
- :class:`RawRegistry`: a raw asyncio HTTP/1.1 server (aiohttp cannot misbehave at the
  framing level): manifests by tag with an unsolicited extra response on the idle keep-alive
  connection, trailing bytes after a complete response, or ``Transfer-Encoding: gzip, chunked``.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import hashlib
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

from aiohttp import web

from tests.fakes.registry import OCI_MANIFEST, serve

MiB = 1024 * 1024


@dataclass
class HostileTokenService:
    """``/token`` misbehaving as ``mode`` says; as a gate it accepts only tokens it issued.

    Modes: ``"normal"``; ``"endless"`` (200, JSON-looking body that never ends: up to
    ``endless_cap`` bytes, then the connection is closed); ``"huge"`` (a valid answer whose
    token is ``token_size`` bytes, distinct per request); ``"redirect"`` (307 to
    ``redirect_to``, so a POST is re-sent there with its body).
    """

    mode: str = "normal"
    endless_cap: int = 64 * MiB
    token_size: int = 60 * 1024
    redirect_to: str = ""
    url: str = ""
    bytes_sent: int = 0  # body bytes of "endless" answers written so far
    requests: list[tuple[str, str | None, str]] = field(default_factory=list)  # method, auth, body
    _issued: set[str] = field(default_factory=set)

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_route("*", "/token", self._token)
        return app

    def challenge(self, request: web.Request, scope: str) -> str | None:
        header = request.headers.get("Authorization", "")
        if header.startswith("Bearer ") and header[len("Bearer ") :] in self._issued:
            return None
        return f'Bearer realm="{self.url}/token",service="hostile",scope="{scope}"'

    async def _token(self, request: web.Request) -> web.StreamResponse:
        body = (await request.read()).decode(errors="replace")
        self.requests.append((request.method, request.headers.get("Authorization"), body))
        if self.mode == "redirect":
            raise web.HTTPTemporaryRedirect(self.redirect_to)
        if self.mode == "endless":
            return await self._endless(request)
        n = len(self.requests)
        token = f"t{n}-" + ("x" * self.token_size if self.mode == "huge" else "ok")
        self._issued.add(token)
        return web.json_response({"token": token, "access_token": token, "expires_in": 300})

    async def _endless(self, request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        response.enable_chunked_encoding()
        await response.prepare(request)
        await response.write(b'{"token": "')
        chunk = b"A" * (256 * 1024)
        try:
            while self.bytes_sent < self.endless_cap:
                await response.write(chunk)
                self.bytes_sent += len(chunk)
        except (ConnectionError, RuntimeError):
            return response  # the client gave up: what the test wants to see
        assert request.transport is not None
        request.transport.close()
        return response


@dataclass
class Recorder:
    """Records every request; answers ``{"token": ...}`` (so a leaked credential works)."""

    url: str = ""
    seen: list[tuple[str, str, str | None, str]] = field(default_factory=list)

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._any)
        return app

    async def _any(self, request: web.Request) -> web.Response:
        body = (await request.read()).decode(errors="replace")
        self.seen.append((request.method, request.path, request.headers.get("Authorization"), body))
        return web.json_response({"token": "stolen", "access_token": "stolen", "expires_in": 300})


@asynccontextmanager
async def running_app(
    service: HostileTokenService | Recorder, host: str = "127.0.0.1"
) -> AsyncIterator[str]:
    """Serve ``service`` on ``host`` (a loopback address) and set its ``url``."""
    if host == "127.0.0.1":
        async with serve(service.app()) as url:
            service.url = url
            yield url
        return
    runner = web.AppRunner(service.app(), access_log=None, shutdown_timeout=0.5)
    await runner.setup()
    site = web.TCPSite(runner, host, 0)
    await site.start()
    service.url = f"http://{host}:{runner.addresses[0][1]}"
    try:
        yield service.url
    finally:
        await runner.cleanup()


def manifest_bytes(marker: str) -> bytes:
    """A small, valid OCI image manifest, distinct per ``marker``."""
    config = json.dumps({"marker": marker}).encode()
    return json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": "sha256:" + hashlib.sha256(config).hexdigest(),
                "size": len(config),
            },
            "layers": [],
        }
    ).encode()


def manifest_response(body: bytes, *, extra_headers: str = "") -> bytes:
    """A complete HTTP/1.1 200 answer for a manifest with a Content-Length."""
    digest = "sha256:" + hashlib.sha256(body).hexdigest()
    head = (
        "HTTP/1.1 200 OK\r\n"
        f"Content-Type: {OCI_MANIFEST}\r\n"
        f"Docker-Content-Digest: {digest}\r\n"
        f"Content-Length: {len(body)}\r\n"
        f"{extra_headers}\r\n"
    )
    return head.encode() + body


@dataclass
class RawRegistry:
    """A raw HTTP/1.1 registry: ``GET|HEAD /v2/<repo>/manifests/<tag>`` from ``manifests``.

    Fault switches:
    ``unsolicited``: after each complete answer, wait for ``unsolicited_after`` to be set (the
    test sets it when it wants), then write these bytes on the idle keep-alive connection.
    ``trailing``: bytes written right after the body, in the same segment.
    ``transfer_gzip``: the body is gzip-compressed and sent ``Transfer-Encoding: gzip, chunked``.
    Counts connections and requests; everything else is a 404.
    """

    manifests: dict[str, bytes] = field(default_factory=dict)  # "<repo>:<tag>" -> body
    unsolicited: bytes | None = None
    unsolicited_sent: asyncio.Event = field(default_factory=asyncio.Event)
    trailing: bytes = b""
    transfer_gzip: bool = False
    connections: int = 0
    requests: list[str] = field(default_factory=list)
    url: str = ""
    writers: set[asyncio.StreamWriter] = field(default_factory=set)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self.writers.add(writer)
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                method, path, _ = head.split(b"\r\n", 1)[0].decode().split(" ", 2)
                self.requests.append(f"{method} {path}")
                writer.write(self._answer(method, path.split("?", 1)[0]))
                await writer.drain()
                if self.unsolicited is not None and not self.unsolicited_sent.is_set():
                    await asyncio.sleep(0.05)  # after the client has read the whole answer
                    writer.write(self.unsolicited)
                    await writer.drain()
                    self.unsolicited_sent.set()
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.LimitOverrunError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    def _answer(self, method: str, path: str) -> bytes:
        if path in ("/v2/", "/v2"):
            return (
                b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}"
            )
        repo, _, tag = path.removeprefix("/v2/").rpartition("/manifests/")
        body = self.manifests.get(f"{repo}:{tag}")
        if body is None:
            err = b'{"errors":[{"code":"MANIFEST_UNKNOWN","message":"unknown"}]}'
            return (
                b"HTTP/1.1 404 Not Found\r\nContent-Type: application/json\r\n"
                + f"Content-Length: {len(err)}\r\n\r\n".encode()
                + err
            )
        if self.transfer_gzip:
            return self._gzip_chunked(body, head_only=method == "HEAD")
        answer = manifest_response(body)
        if method == "HEAD":
            return answer[: len(answer) - len(body)]
        return answer + self.trailing

    @staticmethod
    def _gzip_chunked(body: bytes, *, head_only: bool) -> bytes:
        packed = gzip.compress(body)
        head = (
            f"HTTP/1.1 200 OK\r\nContent-Type: {OCI_MANIFEST}\r\n"
            "Transfer-Encoding: gzip, chunked\r\n\r\n"
        ).encode()
        if head_only:
            return head
        return head + f"{len(packed):x}\r\n".encode() + packed + b"\r\n0\r\n\r\n"


@asynccontextmanager
async def running_raw(registry: RawRegistry) -> AsyncIterator[RawRegistry]:
    """Serve ``registry`` on a free loopback port and set its ``url``."""
    server = await asyncio.start_server(registry._handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    registry.url = f"http://127.0.0.1:{port}"
    try:
        yield registry
    finally:
        server.close()
        for writer in registry.writers:
            writer.close()  # the handlers see EOF and end
        with contextlib.suppress(Exception):
            await asyncio.wait_for(server.wait_closed(), 2)
