"""Each configured registry's client: its TLS, egress, sessions, credentials, endpoint
health and limits, built in one place."""

from __future__ import annotations

import ssl
from dataclasses import dataclass

from cachesvc.clock import Clock
from cachesvc.config import Config, RegistryConfig
from cachesvc.metrics import Metrics
from cachesvc.upstream.auth import Authorizer, entitled_endpoints
from cachesvc.upstream.client import Upstream
from cachesvc.upstream.credentials import Credentials
from cachesvc.upstream.egress import Egress
from cachesvc.upstream.endpoints import Endpoints
from cachesvc.upstream.ratelimit import Limiter
from cachesvc.upstream.session import RegistrySessions, registry_sessions, trusted_for
from cachesvc.upstream.tls import tls_context


@dataclass(slots=True, frozen=True)
class RegistryClients:
    """The registries' clients, and the sessions the daemon closes at the end."""

    upstreams: dict[str, Upstream]
    # Two sessions per registry (upstream.session).
    sessions: dict[str, RegistrySessions]


def registry_clients(config: Config, metrics: Metrics, clock: Clock) -> RegistryClients:
    """Every registry's client; a bad ca_file/client_cert is a ConfigError before any
    session is opened (TLS is loaded first)."""
    tls = {name: tls_context(registry) for name, registry in config.registries.items()}
    environment = dict(config.proxy_environment)
    egress = {name: Egress(r.proxy, environment) for name, r in config.registries.items()}
    sessions = {n: registry_sessions(r, egress[n]) for n, r in config.registries.items()}
    credentials = Credentials(config.credentials_file, metrics)
    upstreams = {
        name: _upstream(
            config, registry, sessions[name], credentials, tls[name], egress[name], metrics, clock
        )
        for name, registry in config.registries.items()
    }
    return RegistryClients(upstreams, sessions)


def _upstream(
    config: Config,
    registry: RegistryConfig,
    sessions: RegistrySessions,
    credentials: Credentials,
    tls: ssl.SSLContext | bool,
    egress: Egress,
    metrics: Metrics,
    clock: Clock,
) -> Upstream:
    """One registry's client: its TLS, credentials, endpoint health and limits."""
    authorizer = Authorizer(
        registry.name,
        sessions.single,  # token answers are read whole: a fresh connection each
        credentials,
        metrics,
        timeout=config.timeouts.first_byte,
        ssl_context=tls,
        insecure=registry.insecure,
        egress=egress,
        clock=clock,
        entitled=entitled_endpoints(registry),
        trusted=trusted_for(registry, egress),
        redirect_private=registry.redirect_private,
    )
    return Upstream(
        registry,
        sessions,
        authorizer,
        config.timeouts,
        metrics,
        endpoints=_endpoints(registry, metrics, clock),
        limiter=_limiter(registry, metrics, clock),
        ssl_context=tls,
        egress=egress,
        clock=clock,
    )


def _endpoints(registry: RegistryConfig, metrics: Metrics, clock: Clock) -> Endpoints:
    """The registry's endpoints in order, each with its cool-down."""
    return Endpoints(
        registry.name,
        registry.endpoints,
        cooldown=registry.cooldown,
        max_cooldown=registry.max_cooldown,
        metrics=metrics,
        clock=clock,
    )


def _limiter(registry: RegistryConfig, metrics: Metrics, clock: Clock) -> Limiter:
    """cachesvc's own limit on what it asks the registry (concurrency, rate, queue)."""
    return Limiter(
        registry.name,
        max_concurrent=registry.max_concurrent,
        rate=registry.requests_per_second,
        burst=registry.burst,
        queue_size=registry.queue_size,
        queue_timeout=registry.queue_timeout,
        metrics=metrics,
        clock=clock,
    )
