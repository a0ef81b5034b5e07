"""The client side of the peer API: blobs and manifests from another cluster member.

Every request carries ``Authorization: Bearer <first token>`` and ``X-Cachesvc-Peer: <this
daemon's advertise>`` (the receiver uses it as a redirect target for others, never as a
credential) and goes only to members: a 307 from a member (its fan-out is full) is followed
only to another member, at most ``MAX_HOPS`` times, so the token never leaves the cluster.

Timeouts: connecting is tight (``CONNECT_TIMEOUT``, well under a second: a dead peer must not
push containerd into its own fallback), but once connected a peer gets the same first-byte
and stall time as an upstream, since a peer that is slow because its own upstream is slow is
not worse than asking that upstream ourselves. A manifest (a small body, read whole and
bounded by ``MAX_MANIFEST_BYTES``) has the upstream's total deadline too: the connect time
plus ``timeouts.first_byte`` from the request, so a peer trickling it cannot hold a pull
for longer than asking upstream would. Failures are ``UpstreamUnreachable`` /
``UpstreamTimeout`` (so a fill treats them as it treats an upstream's), carrying the peer.
"""

from __future__ import annotations

import asyncio
import json
import ssl
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass

import aiohttp
from yarl import URL

from cachesvc.config import Timeouts
from cachesvc.config.peeraddress import PeerAddress
from cachesvc.errors import RegistryError, UpstreamTimeout, UpstreamUnreachable
from cachesvc.oci import MAX_MANIFEST_BYTES, Digest
from cachesvc.tokenfile import TokenFile
from cachesvc.upstream.body import BlobBody, read_whole
from cachesvc.upstream.client import Answer

__all__ = [
    "CONNECT_TIMEOUT", "MAX_CONTROL_BYTES", "PEER_HEADER", "PREWARM_PATH", "PeerBlob",
    "PeerClient", "PeerFailed",
]  # fmt: skip

CONNECT_TIMEOUT = 0.5  # seconds: a dead peer costs at most this before the next source
MAX_HOPS = 3  # redirects followed (a fan-out tree deeper than 3 hops from one ask is odd)
PEER_HEADER = "X-Cachesvc-Peer"
PREWARM_PATH = "/cluster/v1/prewarm"  # the one control route of the peer API (peer_prewarm)
MAX_CONTROL_BYTES = 256 * 1024  # a prewarm answer: 500 images' progress fits easily


class PeerFailed(UpstreamUnreachable):
    """A peer could not be reached or refused; ``peer`` is the member that failed."""

    def __init__(self, peer: PeerAddress, message: str, *, connect: bool = False) -> None:
        super().__init__(f"peer {peer}: {message}")
        self.peer = peer
        self.connect = connect  # the TCP/TLS connection itself failed (peer unreachable)


@dataclass(slots=True)
class PeerBlob:
    """A blob body from a peer and the member that actually sent it (after redirects)."""

    body: BlobBody
    served_by: PeerAddress
    redirected: bool


class PeerClient:
    """Requests to other members over their peer API."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        tokens: TokenFile,
        self_address: PeerAddress,
        timeouts: Timeouts,
        *,
        is_member: Callable[[PeerAddress], bool],
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self._session = session
        self._tokens = tokens
        self._self = self_address
        self._timeouts = timeouts
        self._is_member = is_member
        self._ssl: ssl.SSLContext | bool = ssl_context if ssl_context is not None else False
        self._scheme = "https" if ssl_context is not None else "http"
        self._timeout = aiohttp.ClientTimeout(
            total=None, sock_connect=CONNECT_TIMEOUT, sock_read=timeouts.stall
        )

    def url(self, peer: PeerAddress, path: str, registry: str) -> URL:
        """The peer API URL of ``path`` (``/v2/...``) for ``registry``."""
        return URL(f"{self._scheme}://{peer}{path}").with_query(ns=registry)

    @asynccontextmanager
    async def blob(
        self, peer: PeerAddress, registry: str, repository: str, digest: Digest, offset: int = 0
    ) -> AsyncIterator[PeerBlob]:
        """GET a blob (from ``offset``) from ``peer``, following fan-out redirects."""
        headers = {"Range": f"bytes={offset}-"} if offset else {}
        path = f"/v2/{repository}/blobs/{digest}"
        resp, served_by = await self._request(peer, "GET", path, registry, headers)
        try:
            wanted = 206 if offset else 200
            if resp.status != wanted:
                raise PeerFailed(served_by, f"answered {resp.status} for {digest}")
            if offset and not resp.headers.get("Content-Range", "").startswith(f"bytes {offset}-"):
                raise PeerFailed(served_by, "answered a range that does not start where asked")
            body = BlobBody(
                resp.content_length, _chunks(resp, served_by), f"peer {served_by}", counted=True
            )
            yield PeerBlob(body, served_by, served_by != peer)
        finally:
            resp.release()

    async def blob_size(
        self, peer: PeerAddress, registry: str, repository: str, digest: Digest
    ) -> int:
        """HEAD a blob on ``peer`` (a blob HEAD asked of its owner): its size, or ``PeerFailed``."""
        path = f"/v2/{repository}/blobs/{digest}"
        resp, served_by = await self._request(peer, "HEAD", path, registry, {})
        try:
            length = resp.headers.get("Content-Length", "")
            if resp.status != 200 or not length.isdigit():
                raise PeerFailed(served_by, f"answered a HEAD of {digest} with {resp.status}")
            return int(length)
        finally:
            resp.release()

    async def manifest(
        self, peer: PeerAddress, registry: str, repository: str, reference: str, accept: str
    ) -> Answer:
        """GET a manifest (tag or digest) from ``peer``: 200 or ``PeerFailed``."""
        path = f"/v2/{repository}/manifests/{reference}"
        deadline = asyncio.get_running_loop().time() + CONNECT_TIMEOUT + self._timeouts.first_byte
        resp, served_by = await self._request(peer, "GET", path, registry, {"Accept": accept})
        try:
            if resp.status != 200:
                raise PeerFailed(served_by, f"answered {resp.status} for manifest {reference}")
            try:
                body = await read_whole(
                    resp, MAX_MANIFEST_BYTES, f"peer {served_by}", path, deadline=deadline
                )
            except RegistryError as exc:
                raise PeerFailed(served_by, exc.message) from None
            return Answer(resp.status, resp.headers, body, f"peer {served_by}")
        finally:
            resp.release()

    async def control(
        self, peer: PeerAddress, method: str, path: str, body: object = None
    ) -> tuple[int, object]:
        """A JSON request to a peer's prewarm route (never redirected); (status, JSON body).

        Used by a cluster prewarm to start and follow each member's part. The answer is
        read bounded (``MAX_CONTROL_BYTES``); anything that is not JSON is ``PeerFailed``.
        """
        headers = {
            "Authorization": f"Bearer {self._tokens.first()}",
            PEER_HEADER: str(self._self),
            "Content-Type": "application/json",
        }
        data = json.dumps(body).encode() if body is not None else None
        url = URL(f"{self._scheme}://{peer}{path}")
        resp = await self._send(peer, method, url, headers, data)
        try:
            raw = await read_whole(resp, MAX_CONTROL_BYTES, f"peer {peer}", path)
        except RegistryError as exc:
            raise PeerFailed(peer, exc.message) from None
        finally:
            resp.release()
        try:
            return resp.status, json.loads(raw) if raw else {}
        except ValueError:
            raise PeerFailed(peer, f"answered {resp.status} with a body that is not JSON") from None

    async def _request(
        self, peer: PeerAddress, method: str, path: str, registry: str, extra: Mapping[str, str]
    ) -> tuple[aiohttp.ClientResponse, PeerAddress]:
        headers = {
            **extra,
            "Authorization": f"Bearer {self._tokens.first()}",
            PEER_HEADER: str(self._self),
        }
        here = peer
        for _ in range(MAX_HOPS + 1):
            resp = await self._send(here, method, self.url(here, path, registry), headers)
            if resp.status not in (301, 302, 303, 307, 308):
                return resp, here
            location = resp.headers.get("Location", "")
            resp.release()
            target = _member_of(location)
            if target is None or target == self._self or not self._is_member(target):
                raise PeerFailed(here, "redirected to something that is not another member")
            here = target
        raise PeerFailed(peer, f"more than {MAX_HOPS} redirects")

    async def _send(
        self,
        peer: PeerAddress,
        method: str,
        url: URL,
        headers: Mapping[str, str],
        data: bytes | None = None,
    ) -> aiohttp.ClientResponse:
        try:
            async with asyncio.timeout(CONNECT_TIMEOUT + self._timeouts.first_byte):
                return await self._session.request(
                    method,
                    url,
                    headers=headers,
                    data=data,
                    allow_redirects=False,
                    auto_decompress=False,
                    timeout=self._timeout,
                    ssl=self._ssl,
                )
        except TimeoutError:
            raise UpstreamTimeout(f"peer {peer} did not answer in time") from None
        except aiohttp.ClientConnectorError as exc:
            raise PeerFailed(peer, f"cannot connect: {exc.strerror or exc}", connect=True) from None
        except aiohttp.ServerTimeoutError:
            raise PeerFailed(peer, "connect timed out", connect=True) from None
        except aiohttp.ClientError as exc:
            raise PeerFailed(peer, f"{type(exc).__name__}") from None


def _member_of(location: str) -> PeerAddress | None:
    """The ``host:port`` of an absolute redirect URL, if it is an IP address."""
    url = URL(location)
    if not url.is_absolute() or url.host is None or url.port is None:
        return None
    try:
        return PeerAddress.of(url.host, url.port)
    except ValueError:
        return None


async def _chunks(resp: aiohttp.ClientResponse, peer: PeerAddress) -> AsyncIterator[bytes]:
    """A peer's blob body as received; a cut or stall is ``PeerFailed`` (resumable)."""
    try:
        async for chunk, _ in resp.content.iter_chunks():
            yield chunk
    except aiohttp.ClientError as exc:
        raise PeerFailed(peer, f"transfer cut: {type(exc).__name__}") from None
    except TimeoutError:
        raise PeerFailed(peer, "transfer stalled") from None
