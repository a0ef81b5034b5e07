"""The client side: one ``Upstream`` per configured registry.

It tries the registry's endpoints in order, runs the auth challenge once on a 401,
applies the connect / first-byte / stall timeouts, and turns every transport
failure and refusal into a ``RegistryError`` *before* anything reaches a client.
A 404 is returned to the caller, which knows whether it means BLOB_UNKNOWN or
MANIFEST_UNKNOWN.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass

import aiohttp
from multidict import CIMultiDictProxy

from cachesvc.auth import TokenCache, parse_challenge
from cachesvc.config import RegistryConfig, Timeouts
from cachesvc.errors import (
    ManifestInvalid,
    RegistryError,
    UpstreamDenied,
    UpstreamError,
    UpstreamRateLimited,
    UpstreamTimeout,
    UpstreamUnauthorized,
    UpstreamUnreachable,
)
from cachesvc.fill import BlobBody
from cachesvc.metrics import Metrics
from cachesvc.oci import MAX_MANIFEST_BYTES

log = logging.getLogger("cachesvc.upstream")

MAX_REDIRECTS = 5
BODY_CHUNK = 1024 * 1024


@dataclass(frozen=True, slots=True)
class Answer:
    """A small upstream answer read whole (manifests, tag lists, HEADs)."""

    status: int
    headers: CIMultiDictProxy[str]
    body: bytes
    endpoint: str


def _status_class(status: int) -> str:
    return f"{status // 100}xx"


def _retry_after(headers: Mapping[str, str]) -> float:
    try:
        return float(headers.get("Retry-After", "1"))
    except ValueError:
        return 1.0


def _ratelimit_remaining(header: str | None) -> float | None:
    """``ratelimit-remaining: 76;w=21600`` -> 76 (None when absent or unreadable)."""
    if not header:
        return None
    try:
        return float(header.split(";", 1)[0].strip())
    except ValueError:
        return None


class Upstream:
    """Requests to one registry's endpoints."""

    def __init__(
        self,
        config: RegistryConfig,
        session: aiohttp.ClientSession,
        tokens: TokenCache,
        timeouts: Timeouts,
        metrics: Metrics,
    ) -> None:
        self.config = config
        self.name = config.name
        self._session = session
        self._tokens = tokens
        self._timeouts = timeouts
        self._metrics = metrics
        self._client_timeout = aiohttp.ClientTimeout(
            total=None, sock_connect=timeouts.connect, sock_read=timeouts.stall
        )

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
        """Send a request, trying endpoints in order; yields a 2xx, 3xx-free or 404 response.

        Connect errors, timeouts, 5xx and 429 move on to the next endpoint; when all
        fail, the most telling error is raised. 401 runs the auth challenge once.
        """
        last: RegistryError | None = None
        for endpoint in self.config.endpoints:
            try:
                response = await self._send(endpoint, method, path, scope, headers, params)
            except (UpstreamUnreachable, UpstreamTimeout, UpstreamRateLimited) as exc:
                last = exc
                continue
            try:
                yield response
                return
            finally:
                response.release()
        assert last is not None
        raise last

    async def _send(
        self,
        endpoint: str,
        method: str,
        path: str,
        scope: str,
        headers: Mapping[str, str] | None,
        params: Mapping[str, str] | None,
    ) -> aiohttp.ClientResponse:
        url = endpoint + path
        request_headers = dict(headers or {})
        token = self._tokens.cached(self.name, scope)
        for attempt in (1, 2):
            if token is not None:
                request_headers["Authorization"] = f"Bearer {token}"
            response = await self._request(endpoint, method, url, request_headers, params)
            if response.status != 401 or attempt == 2:
                break
            challenge = parse_challenge(response.headers.get("WWW-Authenticate", ""))
            response.release()
            if challenge is None or challenge.scheme != "bearer":
                raise UpstreamUnauthorized(
                    f"{self.name} refused the mirror (401) and offers no Bearer challenge it "
                    "can answer anonymously: configure credentials for this registry"
                )
            token = await self._tokens.fetch(self.name, challenge, scope)
        status = response.status
        if status < 300 or status == 404:
            return response
        response.release()
        if status == 401:
            raise UpstreamUnauthorized(
                f"{self.name} refused the mirror's credentials (401): check the credentials "
                "cachesvc uses for this registry (an expired or rotated secret?)"
            )
        if status == 403:
            raise UpstreamDenied(f"{self.name} denied access (403) to {path}")
        if status == 429:
            raise UpstreamRateLimited(
                f"{self.name} rate-limited the mirror (429) at {endpoint}",
                retry_after=_retry_after(response.headers),
            )
        if status >= 500:
            raise UpstreamUnreachable(f"{self.name} answered {status} at {endpoint}")
        raise UpstreamError(f"{self.name} answered {status} for {method} {path}")

    async def _request(
        self,
        endpoint: str,
        method: str,
        url: str,
        headers: Mapping[str, str],
        params: Mapping[str, str] | None,
    ) -> aiohttp.ClientResponse:
        started = time.monotonic()
        try:
            async with asyncio.timeout(self._timeouts.first_byte):
                response = await self._session.request(
                    method,
                    url,
                    headers=headers,
                    params=params,
                    timeout=self._client_timeout,
                    max_redirects=MAX_REDIRECTS,
                    auto_decompress=False,
                )
        except TimeoutError:
            self._count(endpoint, "error")
            raise UpstreamTimeout(f"{self.name} did not answer in time at {endpoint}") from None
        except aiohttp.TooManyRedirects:
            self._count(endpoint, "error")
            raise UpstreamUnreachable(
                f"{self.name}: more than {MAX_REDIRECTS} redirects at {endpoint}"
            ) from None
        except aiohttp.ClientError as exc:
            self._count(endpoint, "error")
            raise UpstreamUnreachable(
                f"{self.name} unreachable at {endpoint}: {exc.__class__.__name__}: {exc}"
            ) from None
        self._count(endpoint, _status_class(response.status))
        self._metrics.upstream_seconds.labels(self.name).observe(time.monotonic() - started)
        remaining = _ratelimit_remaining(response.headers.get("ratelimit-remaining"))
        if remaining is not None:
            self._metrics.ratelimit_remaining.labels(self.name).set(remaining)
        return response

    def _count(self, endpoint: str, status_class: str) -> None:
        self._metrics.upstream_requests.labels(self.name, endpoint, status_class).inc()
        metrics = self._metrics
        healthy = status_class not in ("5xx", "error")
        gauge = metrics.upstream_last_success if healthy else metrics.upstream_last_error
        gauge.labels(self.name, endpoint).set(time.time())

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
        """A request whose body (at most ``limit`` bytes) is read whole."""
        async with self.open(method, path, scope=scope, headers=headers, params=params) as resp:
            body = b""
            if method != "HEAD":
                if resp.content_length is not None and resp.content_length > limit:
                    raise ManifestInvalid(f"{self.name} sent a body over {limit} bytes for {path}")
                try:
                    parts: list[bytes] = []
                    total = 0
                    async for chunk in resp.content.iter_any():
                        total += len(chunk)
                        if total > limit:
                            raise ManifestInvalid(
                                f"{self.name} sent a body over {limit} bytes for {path}"
                            )
                        parts.append(chunk)
                    body = b"".join(parts)
                except aiohttp.ClientError as exc:
                    raise UpstreamUnreachable(f"{self.name}: body cut: {exc}") from None
                except TimeoutError:
                    raise UpstreamTimeout(f"{self.name}: body stalled") from None
            return Answer(resp.status, resp.headers, body, str(resp.url.origin()))

    @asynccontextmanager
    async def blob(self, repository: str, digest: str) -> AsyncIterator[BlobBody | None]:
        """Open a blob GET; yields None for an upstream 404."""
        path = f"/v2/{repository}/blobs/{digest}"
        async with self.open("GET", path, scope=f"repository:{repository}:pull") as resp:
            if resp.status == 404:
                yield None
                return
            if resp.status != 200:
                raise UpstreamError(f"{self.name} answered {resp.status} for a blob GET")
            first = resp.history[0].url if resp.history else resp.url
            yield BlobBody(resp.content_length, self._chunks(resp), str(first.origin()))

    async def _chunks(self, resp: aiohttp.ClientResponse) -> AsyncIterator[bytes]:
        try:
            async for chunk in resp.content.iter_chunked(BODY_CHUNK):
                yield chunk
        except aiohttp.ClientError as exc:
            raise UpstreamUnreachable(f"{self.name}: blob transfer cut: {exc}") from None
        except TimeoutError:
            raise UpstreamTimeout(f"{self.name}: blob transfer stalled") from None
