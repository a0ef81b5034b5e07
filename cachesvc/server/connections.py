"""Client connections of a listener: a header deadline, an idle deadline, and a bound.

aiohttp's server has no deadline for a request's headers and keeps idle keep-alive
connections for an hour, so 200 clients that send a header byte now and then (slowloris)
hold 200 connections for ever, and nothing bounds how many are open. Each listener
(mirror and admin) is served through ``GuardedSite``:

- ``client_header``: the request line and headers must be complete within this from the
  connection's start or from the first byte of the next request on a kept-alive one; else
  ``408`` (when some of it arrived) and the connection is closed.
- ``client_idle``: an idle keep-alive connection is closed after this (aiohttp's
  ``keepalive_timeout``).
- ``max_connections``: connections open at once; one more is answered ``503`` and closed at
  once, with a warning naming ``max_connections`` (at most one per ``_WARN_EVERY`` seconds).
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from typing import Any

from aiohttp import web
from aiohttp.web_protocol import RequestHandler

log = logging.getLogger("cachesvc.server")

_WARN_EVERY = 10.0
_TIMEOUT_ANSWER = b"HTTP/1.1 408 Request Timeout\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"
_BUSY_ANSWER = (
    b"HTTP/1.1 503 Service Unavailable\r\nConnection: close\r\nRetry-After: 1\r\n"
    b"Content-Type: text/plain\r\nContent-Length: 33\r\n\r\ntoo many connections; retry soon\n"
)


class _HeaderDeadline(RequestHandler):
    """aiohttp's handler with a deadline for each request's headers."""

    def __init__(
        self, manager: web.Server, *, header_timeout: float, lost: _Factory, **kwargs: Any
    ) -> None:
        super().__init__(manager, **kwargs)
        self._header_timeout = header_timeout
        self._lost: _Factory | None = lost
        self._header_timer: asyncio.TimerHandle | None = None
        self._head_bytes = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """Start the clock for the first request's headers."""
        super().connection_made(transport)
        self._arm()

    def data_received(self, data: bytes) -> None:
        """Parse; a complete head stops the clock, the first byte of an idle one starts it."""
        idle = not self._request_in_progress and not self._messages
        if data and idle and self._header_timer is None:
            self._arm()
        if idle:
            self._head_bytes += len(data)
        super().data_received(data)
        if self._messages or self._request_in_progress:
            self._disarm()

    def connection_lost(self, exc: BaseException | None) -> None:
        """Stop the clock with the connection, and count it closed (at once)."""
        self._disarm()
        if self._lost is not None:
            self._lost.open -= 1
            self._lost = None
        super().connection_lost(exc)

    def _arm(self) -> None:
        self._head_bytes = 0
        self._header_timer = self._loop.call_later(self._header_timeout, self._expired)

    def _disarm(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _expired(self) -> None:
        self._header_timer = None
        if self._request_in_progress or self._messages:
            return
        if self._head_bytes and self.transport is not None:
            self.transport.write(_TIMEOUT_ANSWER)
        self.force_close()


class _Refused(asyncio.Protocol):
    """A connection over ``max_connections``: 503, closed."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        transport.write(_BUSY_ANSWER)
        transport.close()


class _Factory:
    """The protocol factory of one listener (see the module docstring)."""

    def __init__(
        self, server: web.Server, name: str, *, max_connections: int, header_timeout: float
    ) -> None:
        self._server = server
        self._name = name
        self._max = max_connections
        self._header_timeout = header_timeout
        self._warned_at = -_WARN_EVERY
        self.open = 0  # handlers made and not yet lost (aiohttp's own list lags behind)

    def __call__(self) -> asyncio.Protocol:
        if self.open >= self._max:
            now = time.monotonic()
            if now - self._warned_at >= _WARN_EVERY:
                self._warned_at = now
                log.warning(
                    "%s listener: max_connections (%d) reached; refusing new connections "
                    "with 503 until some close (raise max_connections if this is load, "
                    "not an attack)",
                    self._name, self._max,
                )  # fmt: skip
            return _Refused()
        kwargs: dict[str, Any] = getattr(self._server, "_kwargs", {})
        self.open += 1
        return _HeaderDeadline(
            self._server,
            loop=asyncio.get_running_loop(),
            header_timeout=self._header_timeout,
            lost=self,
            **kwargs,
        )


class GuardedSite(web.TCPSite):
    """A ``TCPSite`` whose connections go through ``_Factory``."""

    def __init__(
        self,
        runner: web.AppRunner,
        host: str,
        port: int,
        *,
        name: str,
        max_connections: int,
        header_timeout: float,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        super().__init__(runner, host, port, reuse_address=True, ssl_context=ssl_context)
        self._guard_name = name
        self._max_connections = max_connections
        self._header_timeout = header_timeout

    async def start(self) -> None:
        """Bind, as ``TCPSite.start`` does, with the guarded protocol factory."""
        await web.BaseSite.start(self)
        server = self._runner.server
        assert isinstance(server, web.Server)
        factory = _Factory(
            server,
            self._guard_name,
            max_connections=self._max_connections,
            header_timeout=self._header_timeout,
        )
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            factory,
            self._host,
            self._port,
            ssl=self._ssl_context,
            backlog=self._backlog,
            reuse_address=True,
        )
        sockets = self._server.sockets
        self._bound_port = sockets[0].getsockname()[1] if sockets else self._port
