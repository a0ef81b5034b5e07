"""The client side: one ``Upstream`` per configured registry.

It tries the registry's endpoints in order (skipping those ``endpoints.py`` says are
cooling down or rate-limited), waits its turn in the registry's limiter
(``ratelimit.py``), answers a 401 challenge once (``auth.py``), sends each request
through ``wire.py`` (redirects under ``redirect.py``'s rules, the connect / first-byte
timeouts; the stall timeout is the body's), and turns every transport failure and
refusal into a ``RegistryError`` *before* anything reaches a client. For ``fetch`` a 404
is returned to the caller, which knows whether it means MANIFEST_UNKNOWN; ``blob`` raises
``BlobUnknown`` itself. Bodies are read by ``body.py``.

Small bodies (``fetch``) have a total deadline of ``timeouts.first_byte`` from the request;
blob bodies are the fill's (``timeouts.stall`` between reads), so ``stall`` never caps
``first_byte``. Transfer codings other than chunked, and content codings, are refused:
cachesvc serves the exact bytes and would otherwise hash and cache compressed ones.
Redirects and token services on hosts that are not an endpoint's must pass the address
rule (``addresses``). A 404 for a blob or a manifest by digest is remembered for the
registry's ``negative_ttl`` (``missing``).

A repository ``path_prefix`` of an endpoint rewrites ``/v2/<repo>/...`` to
``/v2/<prefix>/<repo>/...`` and the token scope to match.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass

import aiohttp
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

from cachesvc.clock import SYSTEM_CLOCK, Clock
from cachesvc.config import RegistryConfig, Timeouts
from cachesvc.errors import (
    BlobUnknown,
    RegistryError,
    UpstreamDenied,
    UpstreamError,
    UpstreamRateLimited,
    UpstreamTimeout,
    UpstreamUnauthorized,
    UpstreamUnreachable,
)
from cachesvc.metrics import Metrics
from cachesvc.oci import MAX_MANIFEST_BYTES, Digest
from cachesvc.upstream import redirect
from cachesvc.upstream.auth import Authorizer, parse_challenge, refused_hint
from cachesvc.upstream.body import BlobBody, blob_chunks, read_whole
from cachesvc.upstream.egress import (
    CONNECT_DIRECTLY,
    PROXY_AUTH_HINT,
    PROXY_AUTH_REQUIRED,
    Egress,
)
from cachesvc.upstream.endpoints import Endpoints
from cachesvc.upstream.missing import Missing
from cachesvc.upstream.ratelimit import Limiter, Ticket
from cachesvc.upstream.session import RegistrySessions
from cachesvc.upstream.wire import Outgoing, Wire, refuse_codings

log = logging.getLogger("cachesvc.upstream")


@dataclass(frozen=True, slots=True)
class Answer:
    """A small upstream answer read whole (manifests, tag lists, HEADs)."""

    status: int
    headers: CIMultiDictProxy[str]
    body: bytes
    endpoint: str


def _ratelimit_value(header: str | None) -> float | None:
    """``76;w=21600`` -> 76."""
    if not header:
        return None
    try:
        return float(header.split(";", 1)[0].strip())
    except ValueError:
        return None


def _by_digest(path: str) -> bool:
    """A blob path, or a manifest path whose reference is a digest (immutable: a 404 holds)."""
    return "/blobs/" in path or ":" in path.rpartition("/manifests/")[2]


def _rewrite(path: str, scope: str, prefix: str) -> tuple[str, str]:
    """Insert a repository prefix into ``/v2/<repo>/...`` and its ``repository:`` scope."""
    if not prefix or not path.startswith("/v2/"):
        return path, scope
    path = f"/v2/{prefix}/{path[4:]}"
    if scope.startswith("repository:"):
        scope = f"repository:{prefix}/{scope[len('repository:') :]}"
    return path, scope


class Upstream:
    """Requests to one registry's endpoints."""

    def __init__(
        self,
        config: RegistryConfig,
        sessions: RegistrySessions,
        authorizer: Authorizer,
        timeouts: Timeouts,
        metrics: Metrics,
        *,
        endpoints: Endpoints,
        limiter: Limiter,
        ssl_context: ssl.SSLContext | bool = True,
        egress: Egress = CONNECT_DIRECTLY,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        self.config = config
        self.name = config.name
        self._sessions = sessions
        self._auth = authorizer
        self._timeouts = timeouts
        self._metrics = metrics
        self.endpoints = endpoints
        self.limiter = limiter
        self._wire = Wire(
            config, timeouts, metrics, endpoints, ssl_context=ssl_context, egress=egress
        )
        self._missing = Missing(config.negative_ttl, clock)

    @asynccontextmanager
    async def open(
        self,
        method: str,
        path: str,
        *,
        scope: str,
        headers: Mapping[str, str] | None = None,
        params: Mapping[str, str] | None = None,
    ) -> AsyncIterator[aiohttp.ClientResponse]:
        """Send a request, trying endpoints in order; yields a 2xx or 404 response.

        On a pooled connection (``session``): only for blob GETs, whose bytes are
        digest-checked; answers read whole and kept by name go through ``fetch``.

        Connect errors, timeouts, 5xx, 429, 401 and 403 move on to the next endpoint; when all
        fail, the last error is raised. 401 runs the auth challenge once. The limiter
        slot is held until the block ends (a blob body is read inside it).
        """
        pooled = self._sessions.pooled
        async with self._open(method, path, scope, headers, params, pooled) as (response, _):
            yield response

    @asynccontextmanager
    async def _open(
        self,
        method: str,
        path: str,
        scope: str,
        headers: Mapping[str, str] | None,
        params: Mapping[str, str] | None,
        session: aiohttp.ClientSession,
    ) -> AsyncIterator[tuple[aiohttp.ClientResponse, float]]:
        """``open``, also yielding when (loop time) the answering request was sent."""
        loop = asyncio.get_running_loop()
        async with self.limiter.slot() as ticket:
            last: RegistryError | None = None
            for attempt, index in enumerate(self.endpoints.available()):
                endpoint = self.config.endpoints[index]
                if attempt:
                    self.limiter.renew(ticket)
                ep_path, ep_scope = _rewrite(path, scope, self.config.path_prefix(index))
                sent = loop.time()
                try:
                    response = await self._send(
                        ticket, endpoint, method, ep_path, ep_scope, headers, params, session
                    )
                except (UpstreamUnreachable, UpstreamTimeout) as exc:
                    last = exc
                    continue
                except (UpstreamUnauthorized, UpstreamDenied) as exc:
                    # An endpoint that will not serve us (a CDN that wants credentials it
                    # does not get): the next one may; the last one's refusal is the answer.
                    last = exc
                    continue
                except UpstreamRateLimited as exc:
                    if exc.own_limit:  # cachesvc's limiter: no other endpoint would help
                        raise
                    last = exc
                    continue
                try:
                    yield response, sent
                    return
                finally:
                    response.release()
            assert last is not None
            raise last

    async def _send(
        self,
        ticket: Ticket,
        endpoint: str,
        method: str,
        path: str,
        scope: str,
        headers: Mapping[str, str] | None,
        params: Mapping[str, str] | None,
        session: aiohttp.ClientSession,
    ) -> aiohttp.ClientResponse:
        url = endpoint + path
        request_headers = dict(headers or {})
        authorization = self._auth.header(endpoint, scope)
        for attempt in (1, 2):
            if authorization is not None:
                request_headers["Authorization"] = authorization
            await self.limiter.pace(ticket)
            outgoing = Outgoing(method, URL(url), dict(request_headers), params)
            response, redirected = await self._wire.request(endpoint, outgoing, session)
            if response.status != 401 or attempt == 2 or redirected:
                break
            challenge = parse_challenge(response.headers.get("WWW-Authenticate", ""))
            response.release()
            authorization = await self._auth.answer(endpoint, challenge, scope)
        self._record_ratelimit(endpoint, response.headers)
        refuse_codings(self.name, response, endpoint)
        if response.status < 300 or response.status == 404:
            self.endpoints.succeeded(endpoint)
            return response
        response.release()
        raise self._refusal(response, endpoint, method, path, redirected=redirected)

    def _refusal(
        self,
        response: aiohttp.ClientResponse,
        endpoint: str,
        method: str,
        path: str,
        *,
        redirected: bool,
    ) -> RegistryError:
        """The error for a final answer that is neither 2xx nor 404, with its health effect."""
        status = response.status
        if redirected:
            # The registry redirected us somewhere (a CDN) that failed: the endpoint's fault
            # as far as the next request is concerned; the origin may work.
            self.endpoints.failed(endpoint, "redirect")
            return UpstreamUnreachable(
                f"{self.name}: the redirect target {redirect.where(response.url.origin())} "
                f"answered {status} for {method} {path}"
            )
        if status == 429:
            pause = self.endpoints.rate_limited(endpoint, response.headers.get("Retry-After"))
            return UpstreamRateLimited(
                f"{self.name} rate-limited the mirror (429) at {endpoint}", retry_after=pause
            )
        if status >= 500:
            self.endpoints.failed(endpoint, "5xx")
            return UpstreamUnreachable(f"{self.name} answered {status} at {endpoint}")
        if status == PROXY_AUTH_REQUIRED:  # a plain-http request through a forward proxy
            self.endpoints.failed(endpoint, "connect")
            return UpstreamUnreachable(f"{self.name} at {endpoint}: {PROXY_AUTH_HINT}")
        self.endpoints.succeeded(endpoint)
        credential = self._auth.credential(endpoint)
        if status == 401:
            self._metrics.upstream_auth_failures.labels(self.name, "401").inc()
            return UpstreamUnauthorized(
                f"{self.name} refused the mirror's credentials (401 Unauthorized) at "
                f"{endpoint}: {refused_hint(self.name, credential)}"
            )
        if status == 403:
            self._metrics.upstream_auth_failures.labels(self.name, "403").inc()
            return UpstreamDenied(
                f"{self.name} denied the mirror access (403 Forbidden) to {path}: "
                + refused_hint(self.name, credential)
            )
        return UpstreamError(f"{self.name} answered {status} for {method} {path}")

    def _record_ratelimit(self, endpoint: str, headers: Mapping[str, str]) -> None:
        remaining = _ratelimit_value(headers.get("ratelimit-remaining"))
        if remaining is not None:
            self._metrics.ratelimit_remaining.labels(self.name, endpoint).set(remaining)
        limit = _ratelimit_value(headers.get("ratelimit-limit"))
        if limit is not None:
            self._metrics.ratelimit_limit.labels(self.name, endpoint).set(limit)

    # -- typed operations ------------------------------------------------------------

    async def fetch(
        self,
        method: str,
        path: str,
        *,
        scope: str,
        headers: Mapping[str, str] | None = None,
        params: Mapping[str, str] | None = None,
        limit: int = MAX_MANIFEST_BYTES,
    ) -> Answer:
        """A request whose body (at most ``limit`` bytes) is read whole, within
        ``timeouts.first_byte`` of the request (a trickled body must not hold a client)."""
        remembered = _by_digest(path) and self._missing.known(path)
        if remembered:
            self._metrics.negative_hits.labels(self.name).inc()
            return Answer(404, CIMultiDictProxy(CIMultiDict()), b"", "")
        # A fresh connection: no stray bytes on a pooled one can become this answer.
        single = self._sessions.single
        async with self._open(method, path, scope, headers, params, single) as (resp, sent):
            body = b""
            if method != "HEAD":
                deadline = sent + self._timeouts.first_byte
                body = await read_whole(resp, limit, self.name, path, deadline=deadline)
            if resp.status == 404 and _by_digest(path):
                self._missing.remember(path)
            return Answer(resp.status, resp.headers, body, str(resp.url.origin()))

    @asynccontextmanager
    async def blob(
        self, repository: str, digest: Digest, offset: int = 0
    ) -> AsyncIterator[BlobBody]:
        """Open a blob GET; an upstream 404 is ``BlobUnknown`` (decided here, once).

        ``offset`` > 0 asks for the rest of the blob from there (a fill resuming after its
        source died); the body's ``size`` is then the bytes from ``offset`` on.
        """
        path = f"/v2/{repository}/blobs/{digest}"
        unknown = f"blob {digest} not found in {self.name}/{repository}"
        if self._missing.known(path):
            self._metrics.negative_hits.labels(self.name).inc()
            raise BlobUnknown(f"{unknown} (upstream said so moments ago; remembered)")
        headers = {"Range": f"bytes={offset}-"} if offset else None
        scope = f"repository:{repository}:pull"
        async with self.open("GET", path, scope=scope, headers=headers) as resp:
            if resp.status == 404:
                self._missing.remember(path)
                raise BlobUnknown(f"blob {digest} not found in {self.name}/{repository}")
            wanted = 206 if offset else 200
            if resp.status != wanted or (offset and not _starts_at(resp, offset)):
                raise UpstreamError(f"{self.name} answered {resp.status} for a blob GET")
            first = resp.history[0].url if resp.history else resp.url
            yield BlobBody(resp.content_length, blob_chunks(resp, self.name), str(first.origin()))


def _starts_at(resp: aiohttp.ClientResponse, offset: int) -> bool:
    """Whether a 206 answer's ``Content-Range`` starts at ``offset`` (``bytes N-M/T``)."""
    unit, _, rest = resp.headers.get("Content-Range", "").partition(" ")
    start = rest.partition("-")[0]
    return unit == "bytes" and start.isdigit() and int(start) == offset
