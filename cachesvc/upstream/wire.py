"""One request on the wire to one endpoint: redirects, timeouts, typed transport failures.

``Upstream`` decides which endpoint, which credentials and what an answer means; this is
what happens between sending a request and having a final (non-redirect) response. Each
redirect hop must pass the address rule (``addresses``) and the redirect rules
(``redirect``); ``Authorization`` never follows a hop to another host; the headers have
``timeouts.first_byte`` in all; a connect failure, a timeout or data aiohttp refuses
becomes an ``UpstreamError`` naming the endpoint, and the endpoint's health is told.
The body is checked for codings cachesvc will not decode (``refuse_codings``): digests are
over the exact bytes.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections.abc import Mapping
from dataclasses import dataclass

import aiohttp
from yarl import URL

from cachesvc.config import RegistryConfig, Timeouts
from cachesvc.errors import UpstreamError, UpstreamTimeout, UpstreamUnreachable
from cachesvc.metrics import Metrics
from cachesvc.upstream import addresses, redirect
from cachesvc.upstream.egress import CONNECT_DIRECTLY, Egress, connection_failure
from cachesvc.upstream.endpoints import Endpoints
from cachesvc.upstream.session import trusted_for

__all__ = ["Outgoing", "Wire", "refuse_codings"]


@dataclass(slots=True)
class Outgoing:
    """The request as it is sent next: a redirect changes its URL (and a 303 its method)."""

    method: str
    url: URL
    headers: dict[str, str]
    params: Mapping[str, str] | None


def _status_class(status: int) -> str:
    return f"{status // 100}xx"


def refuse_codings(name: str, response: aiohttp.ClientResponse, endpoint: str) -> None:
    """Raise for a body in a coding cachesvc would have to decode to get the exact bytes.

    Digests are over the exact bytes: a compressed body would be hashed (and served) as
    something it is not. We ask for identity; a content coding on a 2xx, or any
    transfer coding but chunked, is refused (the connection is closed, not reused).
    """
    transfer = response.headers.get("Transfer-Encoding", "").strip().lower()
    codings = [c.strip() for c in transfer.split(",") if c.strip()]
    if any(c not in ("chunked", "identity") for c in codings):
        response.close()
        raise UpstreamUnreachable(
            f"{name} answered with Transfer-Encoding {transfer[:40]!r} at {endpoint}; "
            "cachesvc decodes no transfer coding but chunked and keeps exact bytes only"
        )
    encoding = response.headers.get("Content-Encoding", "identity").strip().lower()
    if response.status < 300 and encoding not in ("", "identity"):
        response.close()
        raise UpstreamUnreachable(
            f"{name} answered with Content-Encoding {encoding[:20]!r} at {endpoint}; "
            "cachesvc asks for the exact bytes (Accept-Encoding: identity)"
        )


class Wire:
    """Requests to one registry's endpoints, hop by hop."""

    def __init__(
        self,
        config: RegistryConfig,
        timeouts: Timeouts,
        metrics: Metrics,
        endpoints: Endpoints,
        *,
        ssl_context: ssl.SSLContext | bool = True,
        egress: Egress = CONNECT_DIRECTLY,
    ) -> None:
        self.config = config
        self.name = config.name
        self.endpoints = endpoints
        self._metrics = metrics
        self._first_byte = timeouts.first_byte
        self._ssl = ssl_context
        self._egress = egress
        # No sock_read: headers are first_byte's (``request``), small bodies have its total
        # deadline (``Upstream.fetch``), blob bodies the fill's stall timeout.
        self._client_timeout = aiohttp.ClientTimeout(total=None, sock_connect=timeouts.connect)
        self._trusted = trusted_for(config, egress)

    async def request(
        self, endpoint: str, outgoing: Outgoing, session: aiohttp.ClientSession
    ) -> tuple[aiohttp.ClientResponse, bool]:
        """One request, redirects followed; returns (response, whether it was redirected).

        ``outgoing`` is changed as redirects are followed (its URL, and the method on a 303).
        """
        started = time.monotonic()
        try:
            async with asyncio.timeout(self._first_byte):
                response, hops = await self._follow(endpoint, outgoing, session)
        except TimeoutError:
            self._count(endpoint, "error")
            self.endpoints.failed(endpoint, "timeout")
            raise UpstreamTimeout(f"{self.name} did not answer in time at {endpoint}") from None
        except aiohttp.ClientError as exc:
            self._count(endpoint, "error")
            self.endpoints.failed(endpoint, "connect")
            raise UpstreamUnreachable(
                f"{self.name} unreachable at {endpoint}: {connection_failure(exc)}"
            ) from None
        except ValueError:
            # A request built from upstream-supplied data that aiohttp refuses (a token or
            # a Location with control characters): upstream's fault, not a crash of ours.
            self._count(endpoint, "error")
            raise UpstreamError(
                f"{self.name} sent data that cannot be used in a request (bad token or "
                f"redirect) at {endpoint}"
            ) from None
        self._count(endpoint, _status_class(response.status))
        self._metrics.upstream_seconds.labels(self.name).observe(time.monotonic() - started)
        return response, hops > 0

    async def _follow(
        self, endpoint: str, outgoing: Outgoing, session: aiohttp.ClientSession
    ) -> tuple[aiohttp.ClientResponse, int]:
        seen = {str(outgoing.url)}
        hops = 0
        while True:
            url, method, headers = outgoing.url, outgoing.method, outgoing.headers
            problem = addresses.literal_refusal(
                url.host, self._trusted, allow_private=self.config.redirect_private
            )
            if problem is not None:
                self.endpoints.failed(endpoint, "redirect")
                raise UpstreamUnreachable(f"{self.name}: a redirect at {endpoint}: {problem}")
            proxy, proxy_headers, sent = self._egress.route(url, headers)
            response = await session.request(
                method,
                url,
                headers=sent,
                params=outgoing.params,
                timeout=self._client_timeout,
                allow_redirects=False,
                auto_decompress=False,
                ssl=self._ssl,
                proxy=proxy,
                proxy_headers=proxy_headers,
            )
            if response.status not in redirect.REDIRECTS:
                return response, hops
            here = response.url
            target = redirect.target_of(here, response.headers.get("Location"))
            response.release()
            hops += 1
            problem = redirect.refusal(
                here, target, hops=hops, seen=seen, insecure=self.config.insecure
            )
            if problem is not None or target is None:
                self.endpoints.failed(endpoint, "redirect")
                raise UpstreamUnreachable(
                    f"{self.name}: {problem} at {endpoint} (last hop {redirect.where(here)})"
                )
            seen.add(str(target))
            if target.origin() != here.origin():
                headers.pop("Authorization", None)  # never follows us to another host
            if response.status == 303 and method != "HEAD":
                outgoing.method = "GET"
            outgoing.url, outgoing.params = target, None

    def _count(self, endpoint: str, status_class: str) -> None:
        self._metrics.upstream_answered(self.name, endpoint, status_class)
