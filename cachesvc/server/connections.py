"""Client connections of a listener: a header deadline, an idle deadline, and a bound.

aiohttp's server has no deadline for a request's headers and keeps idle keep-alive
connections for an hour, so 200 clients that send a header byte now and then (slowloris)
hold 200 connections for ever, and nothing bounds how many are open. Each listener
(mirror, admin, peer) is a ``Listener``: an asyncio server of our own whose protocol,
``Guarded``, wraps the protocol aiohttp's ``web.Server`` makes (a ``web.Server`` is a
protocol factory by its documented contract) and passes every event through to it, so
only public asyncio and aiohttp API is used (issue 10):

- ``client_header``: the header block (``RequestFrames`` finds where it ends) must be
  complete within this from the connection's start and from the first byte of each later
  request; else ``408`` (when some of it arrived) and the connection is closed. A TLS
  handshake has the same deadline (asyncio's ``ssl_handshake_timeout``).
- ``client_idle``: an idle keep-alive connection is closed after this. Kept here, not by
  aiohttp's ``keepalive_timeout`` (which ``app`` sets out of reach): aiohttp does not see
  the requests ``FastPath`` answers, and would close a busy connection as idle. A
  connection is idle when every request given to aiohttp was answered (``Answers``, the
  outermost middleware of each listener's app, reports each answer once it is written).
- ``fast``: the mirror listener's ``FastPath`` is offered each whole request head while
  aiohttp has nothing unanswered on the connection; what it answers never reaches aiohttp.
- ``max_connections``: connections open at once; one more is answered ``503`` and closed at
  once, with a warning naming ``max_connections`` (at most one per ``_WARN_EVERY`` seconds).
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from collections.abc import Awaitable, Callable
from typing import cast

from aiohttp import web

from cachesvc.server.clients import transport_host
from cachesvc.server.fastpath import FastPath
from cachesvc.server.requestframe import RequestFrames

log = logging.getLogger("cachesvc.server")

_WARN_EVERY = 10.0
NEVER = 10.0 * 365 * 86400  # aiohttp's keepalive_timeout: idle connections are ours to close
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
_TIMEOUT_ANSWER = b"HTTP/1.1 408 Request Timeout\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"
_BUSY_ANSWER = (
    b"HTTP/1.1 503 Service Unavailable\r\nConnection: close\r\nRetry-After: 1\r\n"
    b"Content-Type: text/plain\r\nContent-Length: 33\r\n\r\ntoo many connections; retry soon\n"
)


class Guarded(asyncio.Protocol):
    """aiohttp's protocol for one connection, behind a header deadline and a slot."""

    def __init__(self, listener: Listener) -> None:
        self._listener = listener
        self._header_timeout = listener.header_timeout
        self._counted = True  # holds one of the listener's max_connections slots
        self._inner: asyncio.Protocol | None = None
        self._transport: asyncio.Transport | None = None
        self._frames = RequestFrames()
        self._timer: asyncio.TimerHandle | None = None
        self._fast = listener.fast
        self._client = ""  # the peer's address, for the fast path's policy and access line
        self._unanswered = 0  # request heads given to aiohttp and not yet answered
        self._paused = False  # the transport's buffer is full: aiohttp waits, so does fast
        self._idle_since: float | None = None  # None while a request is being answered
        self._idle_timer: asyncio.TimerHandle | None = None
        # A TLS connection whose handshake fails never starts: its slot is given back at
        # the handshake deadline instead of at connection_lost (which never comes).
        self._unstarted: asyncio.TimerHandle | None = asyncio.get_running_loop().call_later(
            self._header_timeout + 1.0, self._give_back
        )

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """Start aiohttp's protocol, and the clock for the first request's headers."""
        if self._unstarted is not None:
            self._unstarted.cancel()
            self._unstarted = None
        self._transport = _stream(transport)
        self._client = transport_host(transport)
        self._listener.answers.track(transport, self)
        self._inner = self._listener.server()
        self._inner.connection_made(transport)
        self._arm()

    def data_received(self, data: bytes) -> None:
        """Track the header blocks; a complete one stops the clock, a started one starts it.

        A whole head is offered to the fast path when aiohttp has nothing unanswered;
        everything else goes to aiohttp as it came.
        """
        frames = self._frames
        heads = frames.heads
        whole = frames.feed(data)
        if frames.heads != heads or not frames.in_head or frames.head_bytes:
            self._idle_since = None  # a request began or came (blank lines between are idle)
        if frames.heads != heads:
            self._disarm()  # that head is in; a later one (if begun) gets its own clock
        if frames.broken or (frames.in_head and frames.head_bytes):
            self._arm()
        elif frames.heads:
            self._disarm()  # in a body, or between requests (the idle clock)
        if whole and not self._unanswered and not self._paused and self._fast is not None:
            transport = self._transport
            reply = None
            if transport is not None and not transport.is_closing():
                reply = self._fast.answer(data, self._client)
            if reply is not None and transport is not None:
                transport.write(reply)
                self._idle()
                return
        self._unanswered += frames.heads - heads
        assert self._inner is not None
        self._inner.data_received(data)

    def answered(self) -> None:
        """aiohttp wrote its whole answer to one request (``Answers`` says so)."""
        if self._unanswered > 0:
            self._unanswered -= 1
        if not self._unanswered and self._frames.in_head and not self._frames.head_bytes:
            self._idle()

    def _idle(self) -> None:
        """Nothing to answer: the connection may stay open ``client_idle`` from now."""
        loop = asyncio.get_running_loop()
        self._idle_since = loop.time()
        if self._idle_timer is None:  # else it re-arms itself for the later deadline
            self._idle_timer = loop.call_at(
                self._idle_since + self._listener.idle_timeout, self._idle_check
            )

    def _idle_check(self) -> None:
        self._idle_timer = None
        since = self._idle_since
        if since is None:
            return  # busy now; it arms again when it next becomes idle
        loop = asyncio.get_running_loop()
        deadline = since + self._listener.idle_timeout
        if loop.time() < deadline:
            self._idle_timer = loop.call_at(deadline, self._idle_check)
        elif self._transport is not None and not self._transport.is_closing():
            self._transport.close()

    def eof_received(self) -> bool | None:
        """aiohttp decides whether a half-closed connection stays open."""
        return self._inner.eof_received() if self._inner is not None else None

    def connection_lost(self, exc: Exception | None) -> None:
        """Stop the clocks, give the slot back (at once), then tell aiohttp."""
        self._disarm()
        if self._idle_timer is not None:
            self._idle_timer.cancel()
            self._idle_timer = None
        if self._transport is not None:
            self._listener.answers.untrack(self._transport)
        self._give_back()
        if self._inner is not None:
            self._inner.connection_lost(exc)

    def pause_writing(self) -> None:
        """aiohttp's flow control sees the transport's buffer as it would unwrapped."""
        self._paused = True
        if self._inner is not None:
            self._inner.pause_writing()

    def resume_writing(self) -> None:
        """See ``pause_writing``."""
        self._paused = False
        if self._inner is not None:
            self._inner.resume_writing()

    def _give_back(self) -> None:
        if self._unstarted is not None:
            self._unstarted.cancel()
            self._unstarted = None
        if self._counted:
            self._counted = False
            self._listener.open -= 1

    def _arm(self) -> None:
        if self._timer is None:
            loop = asyncio.get_running_loop()
            self._timer = loop.call_later(self._header_timeout, self._expired)

    def _disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _expired(self) -> None:
        """Headers not complete in time: 408 if the client had begun them, then close.

        A client that pipelined a request behind one still being answered may get the
        408 inside that answer: only a client that trickles a pipelined head does that.
        """
        self._timer = None
        transport = self._transport
        if transport is None or transport.is_closing():
            return
        if self._frames.head_bytes or self._frames.broken:
            transport.write(_TIMEOUT_ANSWER)
        transport.close()


def _stream(transport: asyncio.BaseTransport) -> asyncio.Transport:
    """A stream server's transport is a ``Transport``; not ``isinstance``-checked, because
    uvloop's transports are not registered with asyncio's ABCs (test_event_loops)."""
    return cast(asyncio.Transport, transport)


class _Refused(asyncio.Protocol):
    """A connection over ``max_connections``: 503, closed."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """Answer and close before reading anything."""
        _stream(transport).write(_BUSY_ANSWER)
        transport.close()


class Answers:
    """Which connection each request came on, to tell it when aiohttp answered it.

    ``middleware`` must be the app's outermost: it writes the response itself (aiohttp's
    own ``prepare`` and ``write_eof`` then do nothing), so "answered" means every byte of
    it is in the transport. An exception that escapes it is answered by aiohttp, which
    then closes the connection (its rule for unhandled errors), so none is left waiting.
    """

    def __init__(self) -> None:
        self._by_transport: dict[asyncio.BaseTransport, Guarded] = {}

    def track(self, transport: asyncio.BaseTransport, connection: Guarded) -> None:
        """``connection`` is served over ``transport`` from now on."""
        self._by_transport[transport] = connection

    def untrack(self, transport: asyncio.BaseTransport) -> None:
        """``transport`` is closed."""
        self._by_transport.pop(transport, None)

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """Write the response (an ``HTTPException`` too, as aiohttp would), then report it."""
        try:
            response = await handler(request)
        except web.HTTPException as exc:
            response = web.Response(
                status=exc.status, reason=exc.reason, text=exc.text, headers=exc.headers
            )
        try:
            await response.prepare(request)
            await response.write_eof()
        except ConnectionError:
            return response  # the client left; aiohttp ends the connection quietly
        connection = self._by_transport.get(request.transport) if request.transport else None
        if connection is not None:
            connection.answered()
        return response


class Listener:
    """One listening socket serving ``server``'s protocol through ``Guarded``.

    Not an aiohttp site: a site's only way to choose the protocol is its private state, so
    the socket is ours (``loop.create_server``) and the runner only provides ``server``
    (its public ``server`` property); closing the listener stops accepting, and the
    runner's ``shutdown``/``cleanup`` end the connections as they would a site's.
    """

    def __init__(
        self,
        server: web.Server,
        name: str,
        *,
        max_connections: int,
        header_timeout: float,
        idle_timeout: float,
        answers: Answers,
        fast: FastPath | None = None,
    ) -> None:
        self.server = server
        self.name = name
        self.header_timeout = header_timeout
        self.idle_timeout = idle_timeout
        self.answers = answers  # installed as the outermost middleware of server's app
        self.fast = fast
        self.open = 0  # connections holding a slot (accepted, not yet lost)
        self._max = max_connections
        self._warned_at = -_WARN_EVERY
        self._socket_server: asyncio.Server | None = None

    async def start(
        self, host: str, port: int, ssl_context: ssl.SSLContext | None = None
    ) -> tuple[str, int]:
        """Bind and accept; returns the bound (host, port). ``OSError`` if it cannot bind."""
        loop = asyncio.get_running_loop()
        self._socket_server = await loop.create_server(
            self._accept,
            host,
            port,
            ssl=ssl_context,
            ssl_handshake_timeout=self.header_timeout if ssl_context is not None else None,
            reuse_address=True,
        )
        bound = self._socket_server.sockets[0].getsockname()
        return str(bound[0]), int(bound[1])

    def close(self) -> None:
        """Stop accepting (open connections are the runner's to end)."""
        if self._socket_server is not None:
            self._socket_server.close()
            self._socket_server = None

    def _accept(self) -> asyncio.Protocol:
        if self.open < self._max:
            self.open += 1
            return Guarded(self)
        now = time.monotonic()
        if now - self._warned_at >= _WARN_EVERY:
            self._warned_at = now
            log.warning(
                "%s listener: max_connections (%d) reached; refusing new connections "
                "with 503 until some close (raise max_connections if this is load, "
                "not an attack)",
                self.name, self._max,
            )  # fmt: skip
        return _Refused()
