"""The daemon's listeners: an aiohttp runner and a bound socket each, and their
bounded shutdown."""

from __future__ import annotations

import ssl
import time

from aiohttp import web

from cachesvc.config import Config, ListenAddress
from cachesvc.errors import ListenError
from cachesvc.server.connections import NEVER, Answers, Listener
from cachesvc.server.fastpath import FastPath


class Listeners:
    """Every runner and socket this daemon serves; ``close`` stops accepting,
    ``shutdown`` ends the responses still running by a deadline."""

    def __init__(self, config: Config) -> None:
        self._config = config
        self._runners: list[web.AppRunner] = []
        self._listeners: list[Listener] = []  # sockets serving the runners (connections)

    async def listen(
        self,
        app: web.Application,
        address: ListenAddress,
        key: str,
        ssl_context: ssl.SSLContext | None = None,
        fast: FastPath | None = None,
    ) -> tuple[str, int]:
        """Serve ``app`` on ``address`` (configuration key ``key``); the bound address.

        ``fast`` answers held manifests before aiohttp sees them (the mirror listener).
        """
        config = self._config
        answers = Answers()
        app.middlewares.insert(0, answers.middleware)  # outermost: see Answers
        runner = web.AppRunner(
            app,
            access_log=None,
            shutdown_timeout=config.shutdown_grace,
            handle_signals=False,
            keepalive_timeout=NEVER,  # the listener closes idle connections (client_idle)
        )
        await runner.setup()
        self._runners.append(runner)
        assert runner.server is not None  # set up above
        listener = Listener(
            runner.server,
            {"listen": "mirror", "admin.listen": "admin"}.get(key, key.split(".")[0]),
            max_connections=config.max_connections,
            header_timeout=config.timeouts.client_header,
            idle_timeout=config.timeouts.client_idle,
            answers=answers,
            fast=fast,
        )
        try:
            bound = await listener.start(address.host, address.port, ssl_context)
        except OSError as exc:
            reason = exc.strerror or str(exc)
            raise ListenError(
                f"cannot listen on {address} ({key}): {reason}; is another cachesvc (or "
                f"another service) using that port? Change {key} in the configuration"
            ) from None
        self._listeners.append(listener)
        return bound

    def close(self) -> None:
        """Stop accepting connections."""
        for listener in self._listeners:
            listener.close()
        self._listeners.clear()

    async def shutdown(self, deadline: float) -> None:
        """End every runner; responses still running get until ``deadline`` (monotonic)."""
        for runner in reversed(self._runners):
            # Responses still running get what is left of the deadline, then are cancelled.
            # The runner's own shutdown_timeout is fixed when it is made, so the server's
            # public shutdown(timeout) is called with what is left first: it waits up to
            # the timeout for handlers, cancels them, then waits up to the timeout AGAIN
            # (measured: 2 x grace), so it gets half. cleanup() then finds no connections.
            server = runner.server
            if server is not None:
                server.pre_shutdown()  # idle keep-alive connections close now
                await server.shutdown(max(0.05, (deadline - time.monotonic()) / 2))
            await runner.cleanup()
        self._runners.clear()
