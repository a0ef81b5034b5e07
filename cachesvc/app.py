"""The composition root: build every part from a ``Config``, start, stop.

``Daemon`` owns the object graph (store, upstream session, fills, mirror) and the
two listeners. ``serve`` runs it until SIGTERM/SIGINT and then shuts down within
``shutdown_grace``: stop accepting, let running responses and fills finish, then
cancel what remains (a cancelled fill leaves only a temp file, removed at start-up
and by the fill itself).
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import signal
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import aiohttp
from aiohttp import web
from prometheus_client import CollectorRegistry

from cachesvc import logs
from cachesvc.clock import SYSTEM_CLOCK, Clock
from cachesvc.cluster.node import Cluster, server_tls
from cachesvc.config import Config, ListenAddress, RegistryConfig
from cachesvc.errors import ListenError
from cachesvc.metrics import Metrics
from cachesvc.mirror.blobs import Blobs
from cachesvc.mirror.facade import Mirror
from cachesvc.mirror.fills import FillManager
from cachesvc.mirror.gate import Gate
from cachesvc.mirror.manifests import Manifests
from cachesvc.mirror.peermanifests import PeerManifests
from cachesvc.mirror.routing import Router
from cachesvc.ops.clusterprewarm import ClusterPrewarm
from cachesvc.ops.inventory import Inventory
from cachesvc.ops.nodewiring import WiringMonitor
from cachesvc.ops.prewarm import Prewarmer
from cachesvc.ops.storecheck import StoreChecks
from cachesvc.server import admin_api as adminapi
from cachesvc.server import clients as client_policy
from cachesvc.server import health as admin
from cachesvc.server import mirror_api as handlers
from cachesvc.server import peer_api
from cachesvc.server.admin_cluster import add_cluster_route
from cachesvc.server.connections import Listener
from cachesvc.server.peer_prewarm import PeerPrewarm, add_prewarm_routes
from cachesvc.store.eviction import Evictor
from cachesvc.store.lease import Leases
from cachesvc.store.pins import Pins
from cachesvc.store.retention import Retention
from cachesvc.store.scrub import Scrubber
from cachesvc.store.store import ACCESS_FLUSH_SECONDS, Store
from cachesvc.tokenfile import TokenFile
from cachesvc.upstream.auth import Authorizer, entitled_endpoints
from cachesvc.upstream.client import Upstream
from cachesvc.upstream.credentials import Credentials
from cachesvc.upstream.egress import Egress
from cachesvc.upstream.endpoints import Endpoints
from cachesvc.upstream.ratelimit import Limiter
from cachesvc.upstream.session import RegistrySessions, registry_sessions, trusted_for
from cachesvc.upstream.tls import tls_context

log = logging.getLogger("cachesvc")


@dataclass(slots=True)
class _Parts:
    store: Store
    session: aiohttp.ClientSession
    fills: FillManager
    mirror: Mirror
    leases: Leases
    pins: Pins
    evictor: Evictor
    inventory: Inventory
    prewarm: Prewarmer
    checks: StoreChecks  # verify jobs and the background scrub (issue 11)
    scrubber: Scrubber
    cluster: Cluster | None = None
    # Upstream registries' sessions, two per registry (upstream.session); ``session`` is
    # the cluster's (peer requests).
    sessions: dict[str, RegistrySessions] = field(default_factory=dict)
    cluster_prewarm: ClusterPrewarm | None = None  # "scope": "cluster" prewarm jobs


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
        self._parts: _Parts | None = None
        self._runners: list[web.AppRunner] = []
        self._listeners: list[Listener] = []  # sockets serving the runners (connections)
        self._ready: dict[str, bool] = {"ready": False}
        self.mirror_address: tuple[str, int] | None = None
        self.admin_address: tuple[str, int] | None = None
        self.peer_address: tuple[str, int] | None = None
        self._housekeeping: asyncio.Task[None] | None = None
        # Is containerd on this node wired to us (containerd.config; /readyz, a gauge)?
        self.wiring = WiringMonitor(config.containerd, config.registries, self.metrics)
        self._tokens: TokenFile | None = None  # admin.token_file, loaded by _build

    @property
    def mirror_url(self) -> str:
        """``http://host:port`` of the bound mirror listener."""
        assert self.mirror_address is not None
        return _url(self.mirror_address)

    @property
    def admin_url(self) -> str:
        """``http://host:port`` of the bound admin listener."""
        assert self.admin_address is not None
        return _url(self.admin_address)

    @property
    def parts(self) -> _Parts:
        """The running object graph (after ``start``)."""
        assert self._parts is not None
        return self._parts

    def _build(self, store: Store) -> _Parts:
        config = self.config
        # TLS first: a bad ca_file/client_cert is a ConfigError before anything is opened.
        tls = {name: tls_context(registry) for name, registry in config.registries.items()}
        environment = dict(config.proxy_environment)
        egress = {name: Egress(r.proxy, environment) for name, r in config.registries.items()}
        connector = aiohttp.TCPConnector(
            limit=256, limit_per_host=64, ssl=ssl.create_default_context(), ttl_dns_cache=300
        )
        session = aiohttp.ClientSession(
            connector=connector,
            auto_decompress=False,
            # Exact bytes only: aiohttp would otherwise offer gzip even without decompressing.
            headers={"User-Agent": "cachesvc/0.1", "Accept-Encoding": "identity"},
            trust_env=False,
            # Large reads: fewer, bigger chunks through the fill pipeline (measured: the
            # 64 KiB default caps a 256 MiB cold fill at about half the sha256 rate).
            read_bufsize=4 * 1024 * 1024,
        )
        sessions = {n: registry_sessions(r, egress[n]) for n, r in config.registries.items()}
        credentials = Credentials(config.credentials_file, self.metrics)
        upstreams = {
            name: self._upstream(registry, sessions[name], credentials, tls[name], egress[name])
            for name, registry in config.registries.items()
        }
        fills = FillManager(store, self.metrics, stall_timeout=config.timeouts.stall)
        leases = Leases()
        cluster = self._cluster(session)
        peers = PeerManifests(cluster) if cluster is not None else None
        self._tokens = self._admin_tokens()
        gate = Gate(config.registries, upstreams, self.metrics, self.clock, store)  # policy
        manifests = Manifests(store, upstreams, self.metrics, self.clock, peers, vet=gate.vet)
        mirror = Mirror(
            config,
            Router(config.registries, config.default_registry),
            manifests,
            Blobs(store, fills, upstreams, leases, (cluster, self.metrics) if cluster else None),
            upstreams,
            gate,
        )
        pins = Pins(store, self.metrics)
        retention = Retention(store, pins, leases, fills)  # eviction and purge: one rule
        evictor = Evictor(store, config.storage, retention, self.metrics)
        inventory = Inventory(store, manifests, retention, self.metrics)
        prewarm = Prewarmer(mirror, pins, self.metrics, config.prewarm, config.default_registry)
        self._watch_gauges(store, fills)
        # Every labelled counter an alert uses exists at 0 (increase() misses a series born at 1).
        self.metrics.prime({name: r.endpoints for name, r in config.registries.items()})
        checks = StoreChecks(store, self.metrics, retention=config.prewarm.retention)
        storage = config.storage
        scrubber = Scrubber(
            store, self.metrics, rate=storage.scrub_rate, interval=storage.scrub_interval
        )
        return _Parts(
            store, session, fills, mirror, leases, pins, evictor, inventory, prewarm, checks,
            scrubber, cluster, sessions,
            ClusterPrewarm(prewarm, cluster, config.prewarm.retention) if cluster else None,
        )  # fmt: skip

    def _cluster(self, session: aiohttp.ClientSession) -> Cluster | None:
        """Cluster mode's member (None without ``cluster:``); its token file is read now."""
        if self.config.cluster is None:
            return None
        return Cluster(self.config.cluster, session, self.config.timeouts, self.clock, self.metrics)

    def _watch_gauges(self, store: Store, fills: FillManager) -> None:
        """Gauges read at scrape time from the objects that know the value."""
        m = self.metrics
        m.cache_bytes.set_function(lambda: store.usage_bytes)
        m.cache_entries.set_function(lambda: store.usage_entries)
        m.fills_in_flight.set_function(lambda: len(fills.running()))
        m.fill_waiters.set_function(lambda: sum(f.followers for f in fills.running()))
        root = self.config.storage.root
        m.storage_free.set_function(lambda: shutil.disk_usage(root).free)
        m.storage_total.set_function(lambda: shutil.disk_usage(root).total)
        m.storage_ready.set_function(lambda: store.health.trouble() is None)
        self._watch_disk_bounds()

    def _watch_disk_bounds(self) -> None:
        """storage.max_size and storage.min_free in bytes (a percentage follows the
        filesystem's size, read at scrape time)."""
        m, storage = self.metrics, self.config.storage
        root = storage.root
        m.cache_capacity.set_function(
            lambda: storage.size_limit(shutil.disk_usage(root).total) or 0
        )
        share = storage.min_free
        m.storage_min_free.set_function(
            lambda: share.of(shutil.disk_usage(root).total) if share is not None else 0
        )

    def _upstream(
        self,
        registry: RegistryConfig,
        sessions: RegistrySessions,
        credentials: Credentials,
        tls: ssl.SSLContext | bool,
        egress: Egress,
    ) -> Upstream:
        """One registry's client: its TLS, credentials, endpoint health and limits."""
        authorizer = Authorizer(
            registry.name,
            sessions.single,  # token answers are read whole: a fresh connection each
            credentials,
            self.metrics,
            timeout=self.config.timeouts.first_byte,
            ssl_context=tls,
            insecure=registry.insecure,
            egress=egress,
            clock=self.clock,
            entitled=entitled_endpoints(registry),
            trusted=trusted_for(registry, egress),
            redirect_private=registry.redirect_private,
        )
        endpoints = Endpoints(
            registry.name,
            registry.endpoints,
            cooldown=registry.cooldown,
            max_cooldown=registry.max_cooldown,
            metrics=self.metrics,
            clock=self.clock,
        )
        limiter = Limiter(
            registry.name,
            max_concurrent=registry.max_concurrent,
            rate=registry.requests_per_second,
            burst=registry.burst,
            queue_size=registry.queue_size,
            queue_timeout=registry.queue_timeout,
            metrics=self.metrics,
            clock=self.clock,
        )
        return Upstream(
            registry,
            sessions,
            authorizer,
            self.config.timeouts,
            self.metrics,
            endpoints=endpoints,
            limiter=limiter,
            ssl_context=tls,
            egress=egress,
            clock=self.clock,
        )

    def mirror_app(self) -> web.Application:
        """The aiohttp application of the mirror API."""
        app = web.Application(middlewares=[handlers.errors_and_access_log])
        app[handlers.MIRROR_KEY] = self.parts.mirror
        app[handlers.METRICS_KEY] = self.metrics
        client_policy.install(app, self.config.clients.allow, self.metrics)  # before routing
        handlers.add_routes(app)
        return app

    def admin_app(self) -> web.Application:
        """The aiohttp application of the admin listener."""
        app = web.Application()
        app[admin.ADMIN_METRICS_KEY] = self.metrics
        app[admin.READY_KEY] = self._ready
        app[admin.WIRING_KEY] = self.wiring
        app[admin.STORAGE_TROUBLE_KEY] = self.parts.store.health.trouble
        admin.add_routes(app)
        parts = self.parts
        add_cluster_route(app, parts.cluster)
        adminapi.add_routes(
            app,
            adminapi.AdminServices(
                prewarm=parts.prewarm,
                pins=parts.pins,
                inventory=parts.inventory,
                tokens=self._tokens,
                metrics=self.metrics,
                default_registry=self.config.default_registry,
                checks=parts.checks,
                cluster_prewarm=parts.cluster_prewarm,
            ),
        )
        return app

    def _admin_tokens(self) -> TokenFile | None:
        """``admin.token_file`` (several tokens, re-read on change); ConfigError if unusable."""
        path = self.config.admin.token_file
        if path is None:
            return None
        # Checked on every admin request (a stat; the admin API is not a hot path), so a
        # removed token stops working at once.
        return TokenFile.load(
            path, config_key="admin.token_file", clock=self.clock.monotonic, check_interval=0
        )

    async def start(self) -> None:
        """Open the store, bind both listeners, and become ready."""
        logs.quiet_bad_requests()
        store = await asyncio.to_thread(Store, self.config.storage.root, self.metrics)
        try:
            self._parts = self._build(store)
        except BaseException:  # a ConfigError (key or token file): nothing may stay open
            store.close()
            raise
        if self._parts.store.removed_temp_files:
            log.info("removed %d unfinished temp files", self._parts.store.removed_temp_files)
        try:
            self.admin_address = await self._listen(
                self.admin_app(), self.config.admin.listen, "admin.listen"
            )
            self.mirror_address = await self._listen(
                self.mirror_app(), self.config.listen, "listen"
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
        peers = peer_api.peer_app(cluster, self.parts.mirror, self.metrics)
        add_prewarm_routes(peers, PeerPrewarm(self.parts.prewarm))
        listen = ListenAddress(self.config.cluster.listen.host, self.config.cluster.listen.port)
        self.peer_address = await self._listen(
            peers, listen, "cluster.listen", server_tls(self.config.cluster)
        )

    async def _housekeep(self) -> None:
        """Periodic work off the request path: flush batched last-access times."""
        while True:
            await asyncio.sleep(ACCESS_FLUSH_SECONDS)
            try:
                await asyncio.to_thread(self.parts.store.flush_access)
            except OSError as exc:
                log.warning("could not record access times: %s", exc)

    async def _listen(
        self,
        app: web.Application,
        address: ListenAddress,
        key: str,
        ssl_context: ssl.SSLContext | None = None,
    ) -> tuple[str, int]:
        runner = web.AppRunner(
            app,
            access_log=None,
            shutdown_timeout=self.config.shutdown_grace,
            handle_signals=False,
            keepalive_timeout=self.config.timeouts.client_idle,
        )
        await runner.setup()
        self._runners.append(runner)
        assert runner.server is not None  # set up above
        listener = Listener(
            runner.server,
            {"listen": "mirror", "admin.listen": "admin"}.get(key, key.split(".")[0]),
            max_connections=self.config.max_connections,
            header_timeout=self.config.timeouts.client_header,
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
        for listener in self._listeners:
            listener.close()
        self._listeners.clear()
        await self.wiring.stop()
        if parts is not None:
            if parts.cluster is not None:
                await parts.cluster.stop()
            if parts.cluster_prewarm is not None:
                await parts.cluster_prewarm.close()
            await parts.prewarm.close()
            await parts.checks.close()
            await parts.scrubber.stop()
            await parts.evictor.stop()
            await parts.fills.wait_idle(max(0.0, deadline - time.monotonic()))
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
        if parts is not None:
            await parts.fills.close()
            await parts.session.close()
            for pair in parts.sessions.values():
                await pair.close()
            parts.store.close()
        self._parts = None


def _url(address: tuple[str, int]) -> str:
    return f"http://{ListenAddress(*address)}"  # ListenAddress brackets IPv6 hosts


async def serve(
    config: Config, *, announce: bool = True, on_ready: Callable[[Daemon], None] | None = None
) -> None:
    """Run the daemon until SIGTERM or SIGINT, then shut down gracefully.

    ``on_ready`` runs once both listeners are bound (the CLI's start-up banner).
    """
    daemon = Daemon(config)
    await daemon.start()
    if on_ready is not None:
        on_ready(daemon)
    if announce:
        log.info(
            "cachesvc listening",
            extra={
                "fields": {
                    "mirror": daemon.mirror_url,
                    "admin": daemon.admin_url,
                    "storage": str(config.storage.root),
                    "registries": sorted(config.registries),
                }
            },
        )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
        log.info("shutting down (grace %.0fs)", config.shutdown_grace)
    finally:
        await daemon.stop()
    log.info("stopped")
