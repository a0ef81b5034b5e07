"""The object graph of one daemon: every part built from a ``Config``, in one place."""

from __future__ import annotations

import ssl
from dataclasses import dataclass, field

import aiohttp

from cachesvc.app.gauges import watch_gauges
from cachesvc.app.upstreams import registry_clients
from cachesvc.clock import Clock
from cachesvc.cluster.node import Cluster
from cachesvc.config import Config
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
from cachesvc.ops.prewarm import Prewarmer
from cachesvc.ops.storecheck import StoreChecks
from cachesvc.store.eviction import Evictor
from cachesvc.store.lease import Leases
from cachesvc.store.pins import Pins
from cachesvc.store.retention import Retention
from cachesvc.store.scrub import Scrubber
from cachesvc.store.store import Store
from cachesvc.tokenfile import TokenFile
from cachesvc.upstream.session import RegistrySessions, exact_bytes_session


@dataclass(slots=True)
class Parts:
    """The running object graph; the daemon starts and stops what needs it."""

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
    tokens: TokenFile | None = None  # admin.token_file


def build_parts(config: Config, store: Store, metrics: Metrics, clock: Clock) -> Parts:
    """Every part over ``store``; a ConfigError (TLS files, a token file) comes first."""
    # TLS first: a bad ca_file/client_cert is a ConfigError before anything is opened.
    clients = registry_clients(config, metrics, clock)
    upstreams = clients.upstreams
    session = _cluster_session()
    fills = FillManager(store, metrics, stall_timeout=config.timeouts.stall)
    leases = Leases()
    cluster = _cluster(config, session, metrics, clock)
    peers = PeerManifests(cluster) if cluster is not None else None
    tokens = _admin_tokens(config, clock)
    gate = Gate(config.registries, upstreams, metrics, clock, store)  # policy
    manifests = Manifests(store, upstreams, metrics, clock, peers, vet=gate.vet)
    mirror = Mirror(
        config,
        Router(config.registries, config.default_registry),
        manifests,
        Blobs(store, fills, upstreams, leases, (cluster, metrics) if cluster else None),
        upstreams,
        gate,
    )
    pins = Pins(store, metrics)
    retention = Retention(store, pins, leases, fills)  # eviction and purge: one rule
    evictor = Evictor(store, config.storage, retention, metrics)
    inventory = Inventory(store, manifests, retention, metrics)
    prewarm = Prewarmer(mirror, pins, metrics, config.prewarm, config.default_registry)
    watch_gauges(metrics, config.storage, store, fills)
    # Every labelled counter an alert uses exists at 0 (increase() misses a series born at 1).
    metrics.prime({name: r.endpoints for name, r in config.registries.items()})
    checks = StoreChecks(store, metrics, retention=config.prewarm.retention)
    storage = config.storage
    scrubber = Scrubber(store, metrics, rate=storage.scrub_rate, interval=storage.scrub_interval)
    return Parts(
        store=store,
        session=session,
        fills=fills,
        mirror=mirror,
        leases=leases,
        pins=pins,
        evictor=evictor,
        inventory=inventory,
        prewarm=prewarm,
        checks=checks,
        scrubber=scrubber,
        cluster=cluster,
        sessions=clients.sessions,
        cluster_prewarm=(
            ClusterPrewarm(prewarm, cluster, config.prewarm.retention) if cluster else None
        ),
        tokens=tokens,
    )


def _cluster_session() -> aiohttp.ClientSession:
    """The session of peer requests (cluster mode)."""
    connector = aiohttp.TCPConnector(
        limit=256, limit_per_host=64, ssl=ssl.create_default_context(), ttl_dns_cache=300
    )
    return exact_bytes_session(connector)


def _cluster(
    config: Config, session: aiohttp.ClientSession, metrics: Metrics, clock: Clock
) -> Cluster | None:
    """Cluster mode's member (None without ``cluster:``); its token file is read now."""
    if config.cluster is None:
        return None
    return Cluster(config.cluster, session, config.timeouts, clock, metrics)


def _admin_tokens(config: Config, clock: Clock) -> TokenFile | None:
    """``admin.token_file`` (several tokens, re-read on change); ConfigError if unusable."""
    path = config.admin.token_file
    if path is None:
        return None
    # Checked on every admin request (a stat; the admin API is not a hot path), so a
    # removed token stops working at once.
    return TokenFile.load(
        path, config_key="admin.token_file", clock=clock.monotonic, check_interval=0
    )
