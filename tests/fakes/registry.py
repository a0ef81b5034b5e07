"""A fake upstream registry: a real aiohttp server on loopback with fault switches.

It serves manifests and blobs from memory, counts every request it gets, and can
be told to misbehave: wrong bytes, a cut mid-body, a stall, a status (503, 429
with Retry-After), no Content-Length (chunked), a Bearer token requirement with
its own token endpoint, a 307 redirect of blob GETs (or of manifests) to another server,
a pause mid-body until the test resumes it, a manifest trickled a byte at a time, or the
distribution registry's 404 for an OCI manifest asked for without its media type in Accept.
"""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import json
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Protocol

from aiohttp import web

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_ONLY_MESSAGE = "OCI manifest found, but accept header does not support OCI manifests"


@dataclass
class Faults:
    """Switches; each applies to blob GETs unless its name says otherwise."""

    wrong_bytes: bool = False  # flip one byte in the body (same length)
    cut_after: int | None = None  # close the connection after this many body bytes
    stall_after: int | None = None  # stop sending (keep the socket open) after N bytes
    status: int | None = None  # answer every /v2/<name>/... request with this status
    retry_after: str | None = None  # Retry-After header with ``status``
    chunked: bool = False  # no Content-Length on blob bodies
    slow_chunk_delay: float = 0.0  # sleep between body chunks
    redirect_blobs_to: str | None = None  # 307 blob GETs to this base URL
    redirect_location: str | None = None  # 307 blob GETs to exactly this URL
    manifest_delay: float = 0.0  # sleep before answering manifest requests
    extra_bytes: int = 0  # append garbage after the real body (Content-Length grows)
    empty_body: bool = False  # answer blob GETs with 200 and Content-Length: 0
    gzip: str | None = None  # "polite": gzip bodies when Accept-Encoding allows; "always"
    hold_after: int | None = None  # pause after N body bytes until ``resume`` is set
    resume: asyncio.Event = field(default_factory=asyncio.Event)
    manifest_redirect_location: str | None = None  # 307 manifest GETs/HEADs to exactly this URL
    manifest_trickle_delay: float = 0.0  # send manifest bodies one byte per this many seconds
    oci_only: bool = False  # 404 an OCI manifest when Accept does not list its media type


class Gate(Protocol):
    """Access control in front of the fake's /v2 API (tests/fakes/auth.py has two)."""

    def challenge(self, request: web.Request, scope: str) -> str | None:
        """None to let the request through, else the ``WWW-Authenticate`` of a 401."""


@dataclass
class FakeRegistry:
    """In-memory content plus request counting and faults."""

    blobs: dict[str, bytes] = field(default_factory=dict)
    manifests: dict[str, tuple[str, bytes]] = field(default_factory=dict)  # ref -> (type, body)
    faults: Faults = field(default_factory=Faults)
    require_token: bool = False
    tokens_issued: int = 0
    token_expires_in: int = 300
    token_status: int = 200  # what the token endpoint answers (401: credentials refused)
    token_value: str | None = None  # a fixed token to hand out (default: tok-<n>)
    requests: Counter[tuple[str, str]] = field(default_factory=Counter)
    auth_seen: list[str | None] = field(default_factory=list)
    accept_encodings: list[str | None] = field(default_factory=list)
    url: str = ""
    gate: Gate | None = None  # Basic or token-service auth (tests/fakes/auth.py)
    response_headers: dict[str, str] = field(default_factory=dict)  # on every /v2 answer
    ranged_gets: list[tuple[str, int]] = field(default_factory=list)  # (digest, start)
    arrivals: list[tuple[float, str, str]] = field(
        default_factory=list
    )  # (monotonic, method, path)

    def add_blob(self, data: bytes) -> str:
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        self.blobs[digest] = data
        return digest

    def add_manifest(self, repo: str, tag: str, body: bytes, media_type: str = OCI_MANIFEST) -> str:
        digest = "sha256:" + hashlib.sha256(body).hexdigest()
        self.manifests[f"{repo}:{tag}"] = (media_type, body)
        self.manifests[f"{repo}@{digest}"] = (media_type, body)
        return digest

    def add_image(self, repo: str, tag: str, layers: list[bytes]) -> tuple[str, list[str]]:
        """A minimal image: config + layers + manifest; returns (manifest digest, blob digests)."""
        config = json.dumps({"architecture": "amd64", "os": "linux"}).encode()
        config_digest = self.add_blob(config)
        layer_digests = [self.add_blob(layer) for layer in layers]
        manifest = json.dumps(
            {
                "schemaVersion": 2,
                "mediaType": OCI_MANIFEST,
                "config": {
                    "mediaType": "application/vnd.oci.image.config.v1+json",
                    "digest": config_digest,
                    "size": len(config),
                },
                "layers": [
                    {
                        "mediaType": "application/vnd.oci.image.layer.v1.tar",
                        "digest": d,
                        "size": len(b),
                    }
                    for d, b in zip(layer_digests, layers, strict=True)
                ],
            }
        ).encode()
        return self.add_manifest(repo, tag, manifest), [config_digest, *layer_digests]

    def count(self, method: str, fragment: str) -> int:
        """Requests whose method matches and whose path contains ``fragment``."""
        return sum(n for (m, p), n in self.requests.items() if m == method and fragment in p)

    # -- the server ------------------------------------------------------------------

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self._extra_headers])
        app.router.add_get("/v2/", self._root)
        app.router.add_get("/token", self._token)
        app.router.add_route("*", "/v2/{tail:.+}", self._api)
        return app

    @web.middleware
    async def _extra_headers(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        response = await handler(request)
        if not response.prepared:
            response.headers.update(self.response_headers)
        return response

    async def _root(self, request: web.Request) -> web.Response:
        return web.json_response({})

    async def _token(self, request: web.Request) -> web.Response:
        self.requests[("GET", "/token")] += 1
        if self.token_status != 200:
            return web.json_response({"details": "refused"}, status=self.token_status)
        self.tokens_issued += 1
        return web.json_response(
            {"token": self.token_value or f"tok-{self.tokens_issued}",
             "expires_in": self.token_expires_in}
        )  # fmt: skip

    def _authorized(self, request: web.Request) -> bool:
        header = request.headers.get("Authorization")
        self.auth_seen.append(header)
        return not self.require_token or (header or "").startswith("Bearer tok-")

    async def _api(self, request: web.Request) -> web.StreamResponse:
        tail = request.match_info["tail"]
        self.requests[(request.method, "/v2/" + tail)] += 1
        self.arrivals.append((time.monotonic(), request.method, "/v2/" + tail))
        if self.gate is not None:
            self.auth_seen.append(request.headers.get("Authorization"))
            repo = tail.split("/blobs/")[0].split("/manifests/")[0].removesuffix("/tags/list")
            refusal = self.gate.challenge(request, f"repository:{repo}:pull")
            if refusal is not None:
                return web.json_response(
                    {"errors": [{"code": "UNAUTHORIZED", "message": "auth required"}]},
                    status=401,
                    headers={"WWW-Authenticate": refusal},
                )
        elif not self._authorized(request):
            return web.json_response(
                {"errors": [{"code": "UNAUTHORIZED", "message": "auth required"}]},
                status=401,
                headers={
                    "WWW-Authenticate": f'Bearer realm="{self.url}/token",service="fake",'
                    f'scope="repository:{tail.split("/blobs/")[0].split("/manifests/")[0]}:pull"'
                },
            )
        faults = self.faults
        if faults.status is not None:
            headers = {"Retry-After": faults.retry_after} if faults.retry_after else {}
            return web.json_response(
                {"errors": [{"code": "UNAVAILABLE", "message": "fault"}]},
                status=faults.status,
                headers=headers,
            )
        if "/manifests/" in tail:
            repo, _, ref = tail.rpartition("/manifests/")
            return await self._manifest(request, repo, ref)
        if "/blobs/" in tail:
            return await self._blob(request, tail.rpartition("/blobs/")[2])
        if tail.endswith("/tags/list"):
            repo = tail[: -len("/tags/list")]
            tags = sorted(k.split(":", 1)[1] for k in self.manifests if k.startswith(repo + ":"))
            last = request.query.get("last")
            if last:
                tags = [t for t in tags if t > last]
            n = int(request.query.get("n", "1000"))
            headers = {}
            if len(tags) > n:
                tags = tags[:n]
                headers["Link"] = f'</v2/{repo}/tags/list?last={tags[-1]}&n={n}>; rel="next"'
            return web.json_response({"name": repo, "tags": tags}, headers=headers)
        return web.json_response({"errors": [{"code": "NAME_UNKNOWN"}]}, status=404)

    async def _manifest(self, request: web.Request, repo: str, ref: str) -> web.Response:
        if self.faults.manifest_delay:
            await asyncio.sleep(self.faults.manifest_delay)
        if self.faults.manifest_redirect_location:
            raise web.HTTPTemporaryRedirect(self.faults.manifest_redirect_location)
        key = f"{repo}@{ref}" if ":" in ref else f"{repo}:{ref}"
        item = self.manifests.get(key)
        if item is None:
            return web.json_response({"errors": [{"code": "MANIFEST_UNKNOWN"}]}, status=404)
        media_type, body = item
        if self.faults.oci_only and media_type not in request.headers.get("Accept", ""):
            return web.json_response(  # what the distribution registry answers curl's */*
                {"errors": [{"code": "MANIFEST_UNKNOWN", "message": OCI_ONLY_MESSAGE}]},
                status=404,
            )
        headers = {
            "Content-Type": media_type,
            "Docker-Content-Digest": "sha256:" + hashlib.sha256(body).hexdigest(),
        }
        self.accept_encodings.append(request.headers.get("Accept-Encoding"))
        accepts_gzip = "gzip" in request.headers.get("Accept-Encoding", "")
        if self.faults.gzip == "always" or (self.faults.gzip == "polite" and accepts_gzip):
            body = gzip.compress(body)
            headers["Content-Encoding"] = "gzip"
            del headers["Docker-Content-Digest"]
        if request.method == "HEAD":
            headers["Content-Length"] = str(len(body))
            return web.Response(headers=headers)
        if self.faults.manifest_trickle_delay:
            return await self._trickle(request, body, headers)
        return web.Response(body=body, headers=headers)

    async def _trickle(
        self, request: web.Request, body: bytes, headers: dict[str, str]
    ) -> web.StreamResponse:
        """Headers at once, then one byte per ``manifest_trickle_delay`` (never a stall)."""
        response = web.StreamResponse(headers=headers)
        response.content_length = len(body)
        await response.prepare(request)
        try:
            for at in range(len(body)):
                await response.write(body[at : at + 1])
                await asyncio.sleep(self.faults.manifest_trickle_delay)
            await response.write_eof()
        except ConnectionError:
            pass  # the client gave up, as it should
        return response

    async def _blob(self, request: web.Request, digest: str) -> web.StreamResponse:
        data = self.blobs.get(digest)
        if data is None:
            return web.json_response({"errors": [{"code": "BLOB_UNKNOWN"}]}, status=404)
        faults = self.faults
        if request.method == "HEAD":
            return web.Response(headers={"Content-Length": str(len(data))})
        if faults.redirect_location:
            raise web.HTTPTemporaryRedirect(faults.redirect_location)
        if faults.redirect_blobs_to:
            raise web.HTTPTemporaryRedirect(f"{faults.redirect_blobs_to}{request.path_qs}")
        if faults.wrong_bytes:
            data = data[:-1] + bytes([data[-1] ^ 0xFF])
        if faults.empty_body:
            data = b""
        data += b"x" * faults.extra_bytes
        response = web.StreamResponse()
        start = _range_start(request.headers.get("Range"), len(data))
        if start:  # a fill resuming after its source died (cluster mode)
            response.set_status(206)
            response.headers["Content-Range"] = f"bytes {start}-{len(data) - 1}/{len(data)}"
            data = data[start:]
            self.ranged_gets.append((digest, start))
        if not faults.chunked:
            response.content_length = len(data)
        else:
            response.enable_chunked_encoding()
        await response.prepare(request)
        chunk = 64 * 1024
        for at in range(0, len(data), chunk):
            piece = data[at : at + chunk]
            if faults.cut_after is not None and at + len(piece) > faults.cut_after:
                await response.write(piece[: max(0, faults.cut_after - at)])
                assert request.transport is not None
                request.transport.abort()
                return response
            if faults.hold_after is not None and at + len(piece) > faults.hold_after:
                await response.write(piece[: max(0, faults.hold_after - at)])
                await faults.resume.wait()
                await response.write(piece[max(0, faults.hold_after - at) :])
                continue
            if faults.stall_after is not None and at + len(piece) > faults.stall_after:
                await response.write(piece[: max(0, faults.stall_after - at)])
                await asyncio.sleep(3600)
            await response.write(piece)
            if faults.slow_chunk_delay:
                await asyncio.sleep(faults.slow_chunk_delay)
        await response.write_eof()
        return response


def _range_start(header: str | None, size: int) -> int:
    """The N of ``bytes=N-`` (0 without one); open-ended ranges are all a resume needs."""
    if not header or not header.startswith("bytes=") or not header.endswith("-"):
        return 0
    text = header[len("bytes=") : -1]
    return int(text) if text.isdigit() and int(text) < size else 0


@asynccontextmanager
async def serve(app: web.Application, **handler_args: int) -> AsyncIterator[str]:
    """Run ``app`` on a free loopback port; yields its base URL.

    ``handler_args`` go to aiohttp's request handler (``max_field_size=...`` for huge tokens).
    """
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5, **handler_args)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    try:
        yield f"http://{host}:{port}"
    finally:
        await runner.cleanup()


@asynccontextmanager
async def running(registry: FakeRegistry, **handler_args: int) -> AsyncIterator[FakeRegistry]:
    """Serve ``registry`` and set its ``url``."""
    async with serve(registry.app(), **handler_args) as url:
        registry.url = url
        yield registry
