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

from aiohttp import HttpVersion11, web

from cachesvc.errors import PolicyDenied, RegistryError, StorageUnavailable, Unsupported
from cachesvc.logs import AccessLog
from cachesvc.metrics import Metrics
from cachesvc.mirror.blobs import CachedBlob
from cachesvc.mirror.facade import Mirror, Passthrough
from cachesvc.mirror.fill import Fill, FillFailed
from cachesvc.mirror.manifestcache import ManifestAnswer
from cachesvc.mirror.routing import Target
from cachesvc.oci import Digest, normalize_accept, parse_api_path
from cachesvc.oci.byterange import parse_range
from cachesvc.server import blobsend, precondition, zerocopy
from cachesvc.store.verification import Damage, StoredMismatch

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
    policy: str | None = None  # the policy rule that refused it: clients, allow or verify


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
        if isinstance(exc, PolicyDenied):
            audit.policy = exc.rule
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
        if not audit.bytes and request.method != "HEAD" and isinstance(response, web.Response):
            audit.bytes = len(response.body) if isinstance(response.body, bytes) else 0
        access_log.write(
            access_record(request.remote, request.method, request.path, audit, status, started)
        )


def access_record(
    client: str | None, method: str, path: str, audit: Audit, status: int, started: float
) -> dict[str, object]:
    """One request's access-log fields (``started``: its ``time.monotonic()``)."""
    return {
        "client": client,
        "method": method,
        "path": path[:512],
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
        "policy": audit.policy,
    }


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
    manifest_headers(headers, answer)
    if head:
        return await _head(request, headers, record.size)
    body = answer.body or b""
    audit.bytes = len(body)
    request.app[METRICS_KEY].served_bytes_by("cache").inc(len(body))
    return web.Response(body=body, headers=headers)


def manifest_headers(headers: dict[str, str], answer: ManifestAnswer) -> None:
    """Add what describes a manifest answer (type, digest, validator, staleness)."""
    digest = str(answer.record.digest)
    headers["Content-Type"] = answer.record.media_type
    headers["Docker-Content-Digest"] = digest
    headers["ETag"] = f'"{digest}"'
    if answer.stale_age is not None:
        headers["Warning"] = (
            f'110 cachesvc "stale: upstream unavailable, tag last confirmed '
            f'{int(answer.stale_age)}s ago"'
        )


async def _blob(
    request: web.Request, mirror: Mirror, target: Target, digest: Digest, headers: dict[str, str]
) -> web.StreamResponse:
    etag = precondition.entity_tag(str(digest))
    headers.update(
        {
            "Docker-Content-Digest": str(digest),
            "Accept-Ranges": "bytes",
            "Content-Type": "application/octet-stream",
            "ETag": etag,  # the digest: one validator for hits, fills and HEADs alike
        }
    )
    audit = request[AUDIT_KEY]
    audit.digest = str(digest)
    if request.method == "HEAD":
        size, result, audit.upstream = await mirror.blob_size(target, digest)
        audit.cache = result
        return await _head(request, headers, size, etag)
    unsized_ok = "Range" not in request.headers and request.version >= HttpVersion11
    with await mirror.blob(target, digest, unsized_ok=unsized_ok) as answer:
        audit.cache, audit.upstream = answer.result, answer.upstream
        failed = precondition.failed_status(request.headers, etag)
        if failed is not None:
            return web.Response(status=failed, headers=headers)
        range_header = request.headers.get("Range")
        if not precondition.range_applies(request.headers, etag):
            range_header = None
        if isinstance(answer.source, CachedBlob):
            return await _hit(request, answer.source, range_header, headers)
        return await _fill(request, answer.source.fill, range_header, headers)


async def _hit(
    request: web.Request, blob: CachedBlob, range_header: str | None, headers: dict[str, str]
) -> web.StreamResponse:
    """Send a stored blob (its lease is held by the caller).

    Sent here rather than by aiohttp after the middleware: the access line and
    served_bytes then say what the client really got, and a client that left is 499.
    """
    audit = request[AUDIT_KEY]
    span = parse_range(range_header, blob.size)
    response = blobsend.span_response(headers, blob.size, span)

    def sent(count: int) -> None:
        audit.bytes += count

    check = blob.unverified if span is None else None  # a range was checked whole already
    try:
        await blobsend.send_file(request, response, blob.path, span or (0, blob.size), sent, check)
        if check is not None:
            request.app[MIRROR_KEY].blobs.verified(check)
    except ConnectionError:
        audit.hung_up = True
        _abort(request)
    except (StoredMismatch, OSError) as exc:
        _damaged(request, exc)
        if not response.prepared:
            raise StorageUnavailable(
                f"stored blob {audit.digest} cannot be read; it was dropped, retry to fetch it"
            ) from None
        audit.error, audit.cache = f"aborted mid-body: {exc}", "error"
        _abort(request)
    finally:
        request.app[METRICS_KEY].served_bytes_by("cache").inc(audit.bytes)
    return response


async def _fill(
    request: web.Request, fill: Fill, range_header: str | None, headers: dict[str, str]
) -> web.StreamResponse:
    """Stream a running fill: its size known (a 200 or a 206), or chunked."""
    audit = request[AUDIT_KEY]
    start, end = 0, fill.size
    if fill.size is not None:
        span = parse_range(range_header, fill.size)
        if span is not None:
            start, end = span
        streaming = blobsend.span_response(headers, fill.size, span)
    else:
        streaming = web.StreamResponse(status=200, headers=headers)
        streaming.enable_chunked_encoding()
    await streaming.prepare(request)
    try:
        await _send_fill(request, streaming, fill, start, end)
        await streaming.write_eof()
    except ConnectionError:
        # The client hung up; the fill goes on for the others. aiohttp finishes the
        # response quietly once the transport is gone.
        audit.hung_up = True
        _abort(request)
    except FillFailed as exc:
        # The status line is out: the only honest signal left is to cut the connection,
        # so the client never mistakes a short or wrong body for a complete one.
        audit.error = f"aborted mid-body: {exc.cause.message}"
        audit.cache = "error"
        _abort(request)
    finally:
        request.app[METRICS_KEY].served_bytes_by("upstream").inc(audit.bytes)
    return streaming


def _damaged(request: web.Request, error: StoredMismatch | OSError) -> None:
    """A stored blob was wrong or unreadable while sent: drop it (the store logs it)."""
    digest = Digest.parse(request[AUDIT_KEY].digest or "")
    if isinstance(error, StoredMismatch):
        damage = error.damage
    else:
        damage = Damage(digest, "read_error", f"reading the stored blob failed: {error}")
    request.app[MIRROR_KEY].blobs.damaged(damage)


def _abort(request: web.Request) -> None:
    if request.transport is not None:
        request.transport.abort()


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
            async for data in piece.read():
                await response.write(data)
                sent(len(data))


async def _head(
    request: web.Request, headers: dict[str, str], size: int, etag: str | None = None
) -> web.StreamResponse:
    """A HEAD answer with the exact ``Content-Length`` a GET would have, and no body."""
    failed = None if etag is None else precondition.failed_status(request.headers, etag)
    if failed is not None:
        return web.Response(status=failed, headers=headers)
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
