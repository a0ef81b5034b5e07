"""The /v2 routes: parse the request, make one mirror call, translate the answer.

No disk or upstream I/O happens here beyond streaming what the mirror hands back.
Every ``RegistryError`` becomes an OCI error body; anything else is a bug, logged
with its traceback and answered 500 without details.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import IO, Any

from aiohttp import HttpVersion11, web
from aiohttp.abc import AbstractStreamWriter

from cachesvc.errors import RegistryError, Unsupported, UpstreamError
from cachesvc.logs import AccessLog
from cachesvc.metrics import Metrics
from cachesvc.mirror.blobs import CachedBlob, FillingBlob
from cachesvc.mirror.facade import Mirror, Passthrough
from cachesvc.mirror.fill import Fill, FillFailed
from cachesvc.mirror.manifests import ManifestAnswer
from cachesvc.mirror.routing import Target
from cachesvc.oci import Digest, normalize_accept, parse_api_path
from cachesvc.oci.byterange import parse_range
from cachesvc.server import zerocopy

log = logging.getLogger("cachesvc.handlers")
access_log = AccessLog(logging.getLogger("cachesvc.access"))


@dataclass(slots=True)
class Audit:
    """What one request did, for its access-log line and metrics."""

    registry: str | None = None
    repository: str | None = None
    reference: str | None = None
    digest: str | None = None  # the content digest served (a tag's resolved digest too)
    upstream: str | None = None  # the upstream endpoint this request caused or joined
    cache: str | None = None
    bytes: int = 0
    error: str | None = None
    hung_up: bool = False  # the client closed the connection mid-response (logged as 499)


AUDIT_KEY = web.RequestKey("audit", Audit)
MIRROR_KEY = web.AppKey("mirror", Mirror)
METRICS_KEY = web.AppKey("metrics", Metrics)
API_HEADERS = {"Docker-Distribution-API-Version": "registry/2.0"}
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def error_response(error: RegistryError, *, head: bool = False) -> web.Response:
    """An OCI error answer for ``error`` (no body for HEAD)."""
    body = {"errors": [{"code": error.code, "message": error.message, "detail": error.detail}]}
    headers = {**API_HEADERS, **error.headers()}
    if head:
        return web.Response(status=error.status, headers=headers)
    return web.json_response(body, status=error.status, headers=headers)


@web.middleware
async def errors_and_access_log(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Map errors to OCI answers and write one JSON access-log line per request."""
    started = time.monotonic()
    audit = request[AUDIT_KEY] = Audit()
    response: web.StreamResponse | None = None
    status = 500
    try:
        response = await handler(request)
        status = 499 if audit.hung_up else response.status
        return response
    except RegistryError as exc:
        audit.error = exc.message
        response = error_response(exc, head=request.method == "HEAD")
        status = response.status
        return response
    except web.HTTPException as exc:
        status = exc.status
        raise
    except ConnectionError:
        status = 499  # the client closed the connection mid-response
        raise
    finally:
        request.app[METRICS_KEY].http_responses_by(request.method, str(status)).inc()
        access_log.write(
            {
                "client": request.remote,
                "method": request.method,
                "path": request.path[:512],
                "registry": audit.registry,
                "repository": audit.repository,
                "reference": audit.reference,
                "digest": audit.digest,
                "status": status,
                "bytes": audit.bytes,
                "duration_ms": round((time.monotonic() - started) * 1000, 2),
                "cache": audit.cache,
                "upstream": audit.upstream,
                "error": audit.error,
            }
        )


async def api_root(request: web.Request) -> web.Response:
    """``GET /v2/``: the API version check."""
    return web.json_response({}, headers=API_HEADERS)


async def api(request: web.Request) -> web.StreamResponse:
    """Every ``/v2/<name>/...`` request."""
    mirror = request.app[MIRROR_KEY]
    if request.method not in ("GET", "HEAD"):
        raise Unsupported("this is a pull-through mirror: only GET and HEAD are supported")
    path = parse_api_path(request.match_info["tail"])
    ns = request.query.get("ns")
    target = mirror.router.route(ns, path.name)
    audit = request[AUDIT_KEY]
    audit.registry, audit.repository = target.registry, target.repository
    audit.reference = path.reference or None
    headers = dict(API_HEADERS)
    if ns is not None:
        headers["OCI-Namespace"] = target.registry
    kind_label = {"manifests": "manifest", "blobs": "blob"}.get(path.kind, path.kind)
    response: web.StreamResponse
    try:
        if path.kind == "manifests":
            response = await _manifest(request, mirror, target, path.reference, headers)
        elif path.kind == "blobs":
            response = await _blob(request, mirror, target, Digest.parse(path.reference), headers)
        else:
            if path.kind == "tags":
                query = request.query
                answer = await mirror.tags(target, query.get("n"), query.get("last"))
            else:
                answer = await mirror.referrers(
                    target, Digest.parse(path.reference), request.query.get("artifactType")
                )
            audit.cache, audit.upstream = "passthrough", answer.upstream
            response = _passthrough(answer, headers)
    except RegistryError:
        audit.cache = "error"
        _count(request, kind_label, "error", target.registry)
        raise
    _count(request, kind_label, audit.cache or "error", target.registry)
    return response


def _count(request: web.Request, kind: str, result: str, registry: str) -> None:
    request.app[METRICS_KEY].requests_by(kind, result, registry).inc()


def _passthrough(answer: Passthrough, headers: dict[str, str]) -> web.Response:
    if answer.link:
        headers["Link"] = answer.link
    headers["Content-Type"] = answer.content_type
    return web.Response(status=answer.status, body=answer.body, headers=headers)


async def _manifest(
    request: web.Request, mirror: Mirror, target: Target, reference: str, headers: dict[str, str]
) -> web.StreamResponse:
    head = request.method == "HEAD"
    accept = normalize_accept(request.headers.getall("Accept", []))
    answer: ManifestAnswer = await mirror.manifest(target, reference, accept, head=head)
    record = answer.record
    digest = str(record.digest)
    audit = request[AUDIT_KEY]
    audit.cache, audit.upstream, audit.digest = answer.result, answer.upstream, digest
    headers["Content-Type"] = record.media_type
    headers["Docker-Content-Digest"] = digest
    headers["ETag"] = f'"{digest}"'
    if answer.stale_age is not None:
        headers["Warning"] = (
            f'110 cachesvc "stale: upstream unavailable, tag last confirmed '
            f'{int(answer.stale_age)}s ago"'
        )
    if head:
        return await _head(request, headers, record.size)
    body = answer.body or b""
    audit.bytes = len(body)
    request.app[METRICS_KEY].served_bytes_by("cache").inc(len(body))
    return web.Response(body=body, headers=headers)


async def _blob(
    request: web.Request, mirror: Mirror, target: Target, digest: Digest, headers: dict[str, str]
) -> web.StreamResponse:
    headers.update(
        {
            "Docker-Content-Digest": str(digest),
            "Accept-Ranges": "bytes",
            "Content-Type": "application/octet-stream",
        }
    )
    # No ETag of our own: aiohttp's FileResponse sets its validator on hits, and one
    # value for hits and another for misses would be worse than the digest header alone.
    metrics = request.app[METRICS_KEY]
    audit = request[AUDIT_KEY]
    audit.digest = str(digest)
    if request.method == "HEAD":
        size, result, audit.upstream = await mirror.blob_size(target, digest)
        audit.cache = result
        return await _head(request, headers, size)
    range_header = request.headers.get("Range")
    answer = await mirror.blob(target, digest)
    audit.cache = answer.result
    source = answer.source
    if isinstance(source, FillingBlob):
        audit.upstream = source.fill.endpoint
    if isinstance(source, FillingBlob) and _wait_for_whole_blob(request, source.fill.size):
        await source.fill.drain()
        if source.fill.error is not None:
            raise source.fill.error  # still before the status line
        cached = mirror.blobs.cached(digest)
        if cached is None:
            raise UpstreamError(f"blob {digest} was evicted right after its fill; retry")
        source = cached
    if isinstance(source, CachedBlob):
        try:
            span = parse_range(range_header, source.size)
        except RegistryError:
            if source.lease is not None:
                source.lease.release()
            raise
        # Sent here rather than by aiohttp after the middleware: the access line and
        # served_bytes then say what the client really got, and a client that left is 499.
        hit = _LeasedFileResponse(source, headers=headers)
        try:
            await hit.prepare(request)
        except ConnectionError:
            audit.hung_up = True
            if request.transport is not None:
                request.transport.abort()
        finally:
            audit.bytes = hit.sent
            metrics.served_bytes_by("cache").inc(hit.sent)
        return hit
    fill = source.fill
    start, end = 0, fill.size
    streaming = web.StreamResponse(status=200, headers=headers)
    if fill.size is not None:
        span = parse_range(range_header, fill.size)
        if span is not None:
            start, end = span
            streaming.set_status(206)
            streaming.headers["Content-Range"] = f"bytes {start}-{end - 1}/{fill.size}"
        streaming.content_length = end - start if end is not None else None
    else:
        streaming.enable_chunked_encoding()
    await streaming.prepare(request)
    try:
        await _send_fill(request, streaming, fill, start, end)
        await streaming.write_eof()
    except ConnectionError:
        # The client hung up; the fill goes on for the others. aiohttp finishes the
        # response quietly once the transport is gone.
        audit.hung_up = True
        if request.transport is not None:
            request.transport.abort()
        return streaming
    except FillFailed as exc:
        # The status line is out: the only honest signal left is to cut the connection,
        # so the client never mistakes a short or wrong body for a complete one.
        audit.error = f"aborted mid-body: {exc.cause.message}"
        audit.cache = "error"
        if request.transport is not None:
            request.transport.abort()
        return streaming
    finally:
        metrics.served_bytes_by("upstream").inc(audit.bytes)
    return streaming


class _LeasedFileResponse(web.FileResponse):
    """A zero-copy file answer that holds the blob's lease until the file is sent.

    ``FileResponse.prepare`` opens the file and sends it whole, so releasing there
    covers exactly the time eviction must keep away.
    """

    def __init__(self, blob: CachedBlob, *, headers: dict[str, str]) -> None:
        super().__init__(blob.path, headers=headers)
        self._lease = blob.lease
        self.sent = 0  # body bytes the client's socket took

    async def prepare(self, request: web.BaseRequest) -> AbstractStreamWriter | None:
        if self.prepared:  # sent by the handler; aiohttp calls prepare again after it
            return await super(web.FileResponse, self).prepare(request)
        try:
            return await super().prepare(request)
        finally:
            self.release()

    def _count(self, sent: int) -> None:
        self.sent += sent

    async def _sendfile(
        self, request: web.BaseRequest, fobj: IO[Any], offset: int, count: int
    ) -> AbstractStreamWriter:
        # Not loop.sendfile, on either loop: uvloop has none, and asyncio's waits a loop
        # turn after every partial send even while the socket has room (measured slower
        # on warm hits than cachesvc.server.zerocopy, which sends until the socket is full).
        writer = await super(web.FileResponse, self).prepare(request)  # the headers
        assert writer is not None
        return await self._sendfile_fallback(writer, fobj, offset, count)

    async def _sendfile_fallback(
        self, writer: AbstractStreamWriter, fobj: IO[Any], offset: int, count: int
    ) -> AbstractStreamWriter:
        # Zero-copy where the transport has a socket; aiohttp's read + write otherwise (TLS).
        transport = writer.transport
        if transport is not None and not self.compression:
            try:
                await zerocopy.sendfile(transport, fobj.fileno(), offset, count, self._count)
            except NotImplementedError:
                pass
            else:
                return writer
        result = await super()._sendfile_fallback(writer, fobj, offset, count)
        self.sent += count
        return result

    def release(self) -> None:
        """Give the lease back (also when the response is never sent)."""
        if self._lease is not None:
            self._lease.release()

    def __del__(self) -> None:
        # A response dropped before prepare (client gone, shutdown) must not pin the blob.
        self.release()


async def _send_fill(
    request: web.Request, response: web.StreamResponse, fill: Fill, start: int, end: int | None
) -> None:
    """Send a fill's released bytes as they arrive, counting them in the audit record.

    The fill hands out pieces (``Fill.read``): views of its memory while this client
    keeps up, spans of its file when it fell behind (or joined late). File spans go
    zero-copy (``cachesvc.server.zerocopy``, on either loop) unless the response is
    chunked, whose framing ``sendfile`` would bypass: then they are read and written.
    """
    audit = request[AUDIT_KEY]

    def sent(count: int) -> None:  # as the client's socket takes them (zerocopy: per call)
        audit.bytes += count

    zero_copy = not response.chunked
    async with fill.read(start, end) as pieces:
        async for piece in pieces:
            transport = request.transport
            if transport is None or transport.is_closing():
                raise ConnectionResetError("client went away")
            if isinstance(piece, memoryview):
                await response.write(piece)
                sent(len(piece))
                continue
            if zero_copy:
                try:
                    await zerocopy.sendfile(transport, piece.fd, piece.offset, piece.count, sent)
                    continue
                except NotImplementedError:  # no socket under the transport
                    zero_copy = False
            for data in piece.read():
                await response.write(data)
                sent(len(data))


def _wait_for_whole_blob(request: web.Request, size: int | None) -> bool:
    """Cases where a fill cannot be streamed and the answer waits for the verified file.

    (An empty upstream body is held back by the fill itself until verified.)

    - no size (a chunked upstream) and a Range: nothing to answer the range against yet.
    - no size and an HTTP/1.0 client: no chunked framing to stream it with.
    """
    return size is None and ("Range" in request.headers or request.version < HttpVersion11)


async def _head(request: web.Request, headers: dict[str, str], size: int) -> web.StreamResponse:
    """A HEAD answer with the exact ``Content-Length`` a GET would have, and no body."""
    response = web.StreamResponse(headers=headers)
    response.content_length = size
    await response.prepare(request)
    await response.write_eof()
    return response


def add_routes(app: web.Application) -> None:
    """Register the /v2 routes on ``app``."""
    app.router.add_route("GET", "/v2/", api_root)
    app.router.add_route("GET", "/v2", api_root)
    app.router.add_route("*", "/v2/{tail:.+}", api)
