"""A held manifest answered straight from the connection, without aiohttp's request cycle.

A manifest the mirror holds in memory (by digest, or by a tag confirmed within its
``tag_ttl``) is what every pull asks first and the cheapest thing to answer, yet
aiohttp's machinery around it (request and response objects, the router, middlewares,
a task per request) cost more than everything cachesvc does for it. A fixed answer on
this 2-core machine (``python -m benchmarks.bare_http``): a bare ``web.Application``
29.1k requests/s, the same handler on ``web.Server`` 41.3k, a plain ``asyncio.Protocol``
188k (``--seconds 4``); cachesvc itself did 12.7k (``wrk -t1 -c32``, by hand). So
``Guarded`` (the connection's protocol) offers each complete request head to
``FastPath.answer`` first.

It answers only what it can answer exactly as the aiohttp handler would, with no await:
``GET`` or ``HEAD`` over HTTP/1.1 of ``/v2/<name>/manifests/<reference>`` (optionally
``?ns=<registry>``), a head that arrived whole in one read, with plain names and values
and nothing that changes the exchange (``Connection: close``, ``Upgrade``, ``Expect``, a
body). The decision is the mirror's (``Mirror.held_manifest``: held by digest, or a tag
confirmed within its ``tag_ttl`` for this ``Accept``; admitted; a remembered approval
under ``verify``); headers, metrics and the access line come from the same functions as
the handler's (``mirror_api.manifest_headers``, ``access_record``). Anything else
returns None and the bytes go to aiohttp unchanged, which then decides (and refuses,
counts, logs) as before. ``Guarded`` asks only when aiohttp has answered every earlier
request of the connection, so answers never overtake each other, and not while the
transport is paused (a client that does not read gets no more bytes).
"""

from __future__ import annotations

import email.utils
import re
import time

from aiohttp import http as aiohttp_http

from cachesvc.errors import RegistryError
from cachesvc.metrics import Metrics
from cachesvc.mirror.facade import Mirror
from cachesvc.oci import is_digest, normalize_accept, parse_api_path
from cachesvc.policy.clients import ClientAllowList
from cachesvc.server.mirror_api import (
    API_HEADERS,
    Audit,
    access_log,
    access_record,
    manifest_headers,
)

# A request line this path takes; anything else (percent-encoding, dot segments, other
# query parameters, HTTP/1.0) is aiohttp's to interpret.
_REQUEST_LINE = re.compile(
    rb"(GET|HEAD) (/v2/[A-Za-z0-9._:/-]+)(?:\?ns=([A-Za-z0-9.:\[\]-]+))? HTTP/1\.1"
)
# A header field: a token, a colon, a value of visible ASCII (RFC 9110 5.1, 5.5).
_FIELD = re.compile(
    rb"([!#$%&'*+.^_`|~0-9A-Za-z-]+):[ \t]*([\x21-\x7e]*(?:[ \t]+[\x21-\x7e]+)*)[ \t]*"
)
_CHANGES_EXCHANGE = frozenset({b"upgrade", b"expect", b"content-length", b"transfer-encoding"})


def parse_head(data: bytes) -> tuple[str, str, str | None, list[str]] | None:
    """``(method, path, ns, accept)`` of a head this path may answer, else None; ``accept``
    holds the ``Accept`` values in order (what aiohttp's ``headers.getall`` gives).

    ``data`` is one complete header block (``RequestFrames`` decided that it is).
    """
    lines = data[:-4].split(b"\r\n")
    line = _REQUEST_LINE.fullmatch(lines[0])
    if line is None:
        return None
    path = line.group(2)
    if b"//" in path or b"/." in path:
        return None
    accept: list[str] = []
    for field in lines[1:]:
        match = _FIELD.fullmatch(field)
        if match is None:
            return None
        name = match.group(1).lower()
        if name in _CHANGES_EXCHANGE:
            return None
        if name == b"accept":
            accept.append(match.group(2).decode())
        elif name == b"connection":
            options = {o.strip().lower() for o in match.group(2).split(b",")}
            if options - {b"keep-alive", b""}:
                return None
    ns = line.group(3)
    return line.group(1).decode(), path.decode(), None if ns is None else ns.decode(), accept


class FastPath:
    """Answers held manifests for the mirror listener's connections (see the module)."""

    def __init__(self, mirror: Mirror, metrics: Metrics, allow: ClientAllowList | None) -> None:
        self._mirror = mirror
        self._metrics = metrics
        self._allow = allow
        self._date_second = -1
        self._date = ""

    def answer(self, data: bytes, client: str) -> bytes | None:
        """The whole HTTP response to the request head ``data``, or None (aiohttp's)."""
        if b"/manifests/" not in data:
            return None  # a blob, anything else: declined at the cost of one scan
        started = time.monotonic()
        head = parse_head(data)
        if head is None:
            return None
        method, path, ns, accept = head
        if self._allow is not None and not self._allow.allows(client):
            return None
        try:
            api = parse_api_path(path[len("/v2/") :])
            if api.kind != "manifests":
                return None
            target = self._mirror.router.route(ns, api.name)
        except RegistryError:
            return None
        head_only = method == "HEAD"
        accepted = () if is_digest(api.reference) else normalize_accept(accept)
        answer = self._mirror.held_manifest(target, api.reference, accepted, head=head_only)
        if answer is None:
            return None
        headers = dict(API_HEADERS)
        if ns is not None:
            headers["OCI-Namespace"] = target.registry
        manifest_headers(headers, answer)
        body = b"" if head_only else answer.body or b""
        headers["Content-Length"] = str(answer.record.size if head_only else len(body))
        headers["Date"] = self._http_date()
        headers["Server"] = aiohttp_http.SERVER_SOFTWARE
        reply = _serialize(headers, body)
        if reply is None:
            return None
        metrics = self._metrics
        metrics.requests_by("manifest", answer.result, target.registry).inc()
        if body:
            metrics.served_bytes_by("cache").inc(len(body))
        metrics.http_responses_by(method, "200").inc()
        audit = Audit(
            registry=target.registry,
            repository=target.repository,
            reference=api.reference,
            digest=str(answer.record.digest),
            cache=answer.result,
            upstream=answer.upstream,
            bytes=len(body),
        )
        access_log.write(access_record(client, method, path, audit, 200, started))
        return reply

    def _http_date(self) -> str:
        now = int(time.time())
        if now != self._date_second:
            self._date_second = now
            self._date = email.utils.formatdate(now, usegmt=True)
        return self._date


def _serialize(headers: dict[str, str], body: bytes) -> bytes | None:
    """A 200's bytes; None when a header value could not go out as it is (aiohttp's)."""
    if any("\r" in value or "\n" in value for value in headers.values()):
        return None
    block = "".join(f"{name}: {value}\r\n" for name, value in headers.items())
    try:
        encoded = block.encode("ascii")
    except UnicodeEncodeError:
        return None
    return b"HTTP/1.1 200 OK\r\n" + encoded + b"\r\n" + body
