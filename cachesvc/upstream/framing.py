"""Pooled upstream connections: bytes nobody asked for end the connection (response desync).

aiohttp parses whatever arrives on an idle keep-alive connection as the *next* response
and queues it, so a registry (or anything sharing its host:port) that writes an extra
response after a complete one decides what the next request on that connection gets:
another tag, another registry's manifest, cached under that request's name. aiohttp
already refuses to pool a connection with bytes left after the response it read
(``should_close``); what it misses is bytes that arrive *after* the connection went
back to the pool. ``GuardedHandler`` knows when it is waiting for a response (from
``set_response_params``, called for every request before it is sent, until that
response's body ended) and closes the connection on anything that arrives otherwise.
"""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp.client_proto import ResponseHandler
from aiohttp.streams import EMPTY_PAYLOAD, StreamReader


class GuardedHandler(ResponseHandler):
    """aiohttp's client protocol, closing on unsolicited bytes (see the module docstring)."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(loop)
        self._waiting = False

    def set_response_params(self, **kwargs: Any) -> None:
        """A request is about to be sent on this connection: its response may arrive."""
        self._waiting = True
        super().set_response_params(**kwargs)

    def data_received(self, data: bytes) -> None:
        """Parse the awaited response; anything else closes the connection unread."""
        if data and not self._waiting:
            self.force_close()
            if self.transport is not None:
                self.transport.close()
            return
        queued = len(self)
        super().data_received(data)
        payload: StreamReader | None = self._payload
        if len(self) == queued or payload is None:
            return  # still the headers of the awaited response (or an upgrade)
        if self._skip_payload or payload is EMPTY_PAYLOAD or payload.is_eof():
            self._waiting = False
        else:
            payload.on_eof(self._answered)

    def _answered(self) -> None:
        self._waiting = False
