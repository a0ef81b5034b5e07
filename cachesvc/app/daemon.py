"""``Daemon``: one running cachesvc, started and stopped within one deadline."""

from __future__ import annotations

import asyncio
import logging
import time

from prometheus_client import CollectorRegistry

from cachesvc import logs
from cachesvc.app.applications import admin_app, mirror_app, peer_app
from cachesvc.app.listeners import Listeners
from cachesvc.app.parts import Parts, build_parts
from cachesvc.clock import SYSTEM_CLOCK, Clock
from cachesvc.cluster.node import server_tls
from cachesvc.config import Config, ListenAddress
from cachesvc.errors import ListenError
from cachesvc.metrics import Metrics
from cachesvc.ops.nodewiring import WiringMonitor
from cachesvc.server.fastpath import FastPath
from cachesvc.store.store import ACCESS_FLUSH_SECONDS, Store

log = logging.getLogger("cachesvc")


class Daemon:
    """One running cachesvc: the mirror listener and the admin listener."""

    def __init__(
        self,
        config: Config,
        registry: CollectorRegistry | None = None,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        self.config = config
        self.clock = clock  # every TTL, cool-down and expiry decision reads this one
        self.metrics = Metrics(registry if registry is not None else CollectorRegistry())
        self._parts: Parts | None = None
        self._listeners = Listeners(config)
        self._ready: dict[str, bool] = {"ready": False}
        self.mirror_address: tuple[str, int] | None = None
        self.admin_address: tuple[str, int] | None = None
        self.peer_address: tuple[str, int] | None = None
        self._housekeeping: asyncio.Task[None] | None = None
        # Is containerd on this node wired to us (containerd.config; /readyz, a gauge)?
        self.wiring = WiringMonitor(config.containerd, config.registries, self.metrics)

    @property
    def mirror_url(self) -> str:
        """``http://host:port`` of the bound mirror listener."""
        assert self.mirror_address is not None
        return url(self.mirror_address)

    @property
    def admin_url(self) -> str:
        """``http://host:port`` of the bound admin listener."""
        assert self.admin_address is not None
        return url(self.admin_address)

    @property
    def parts(self) -> Parts:
        """The running object graph (after ``start``)."""
        assert self._parts is not None
        return self._parts

    async def start(self) -> None:
        """Open the store, bind both listeners, and become ready."""
        logs.quiet_bad_requests()
        store = await asyncio.to_thread(Store, self.config.storage.root, self.metrics)
        try:
            self._parts = build_parts(self.config, store, self.metrics, self.clock)
        except BaseException:  # a ConfigError (key or token file): nothing may stay open
            store.close()
            raise
        if self._parts.store.removed_temp_files:
            log.info("removed %d unfinished temp files", self._parts.store.removed_temp_files)
        try:
            self.admin_address = await self._listeners.listen(
                admin_app(self.config, self._parts, self.metrics, self._ready, self.wiring),
                self.config.admin.listen,
                "admin.listen",
            )
            self.mirror_address = await self._listeners.listen(
                mirror_app(self.config, self._parts, self.metrics),
                self.config.listen,
                "listen",
                fast=FastPath(self._parts.mirror, self.metrics, self.config.clients.allow),
            )
            await self._start_cluster()
        except ListenError:
            await self.stop()
            raise
        self._parts.evictor.start()
        await self.wiring.start(ListenAddress(self.config.listen.host, self.mirror_address[1]))
        self._parts.scrubber.start()
        self._ready["ready"] = True
        self._housekeeping = asyncio.get_running_loop().create_task(self._housekeep())

    async def _start_cluster(self) -> None:
        """Learn the members, then open the peer listener (``cluster.listen``)."""
        cluster = self.parts.cluster
        if cluster is None or self.config.cluster is None:
            return
        await cluster.start()
        listen = ListenAddress(self.config.cluster.listen.host, self.config.cluster.listen.port)
        self.peer_address = await self._listeners.listen(
            peer_app(cluster, self.parts, self.metrics),
            listen,
            "cluster.listen",
            server_tls(self.config.cluster),
        )

    async def _housekeep(self) -> None:
        """Periodic work off the request path: flush batched last-access times."""
        while True:
            await asyncio.sleep(ACCESS_FLUSH_SECONDS)
            try:
                await asyncio.to_thread(self.parts.store.flush_access)
            except OSError as exc:
                log.warning("could not record access times: %s", exc)

    async def stop(self) -> None:
        """Graceful stop within ONE deadline of ``shutdown_grace`` seconds.

        Stop accepting; cancel prewarm jobs (their fills are ordinary fills and get
        the same deadline); let running responses and fills finish until the
        deadline; then abort responses and cancel fills (a cancelled fill removes its
        temp file, so nothing unverified stays behind).
        """
        deadline = time.monotonic() + self.config.shutdown_grace
        self._ready["ready"] = False
        self._ready["stopping"] = True
        if self._housekeeping is not None:
            self._housekeeping.cancel()
            self._housekeeping = None
        parts = self._parts
        self._listeners.close()
        await self.wiring.stop()
        if parts is not None:
            await _stop_background(parts, deadline)
        await self._listeners.shutdown(deadline)
        if parts is not None:
            await _close(parts)
        self._parts = None


async def _stop_background(parts: Parts, deadline: float) -> None:
    """Stop the work no request waits for, then give fills until ``deadline``."""
    if parts.cluster is not None:
        await parts.cluster.stop()
    if parts.cluster_prewarm is not None:
        await parts.cluster_prewarm.close()
    await parts.prewarm.close()
    await parts.checks.close()
    await parts.scrubber.stop()
    await parts.evictor.stop()
    await parts.fills.wait_idle(max(0.0, deadline - time.monotonic()))


async def _close(parts: Parts) -> None:
    """Cancel what is left of the fills, close the sessions and the store."""
    await parts.fills.close()
    await parts.session.close()
    for pair in parts.sessions.values():
        await pair.close()
    parts.store.close()


def url(address: tuple[str, int]) -> str:
    """``http://host:port`` of a bound address."""
    return f"http://{ListenAddress(*address)}"  # ListenAddress brackets IPv6 hosts
