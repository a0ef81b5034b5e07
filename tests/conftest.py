"""Shared fixtures: a real cachesvc daemon in-process, fake upstreams, HTTP clients."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from prometheus_client import CollectorRegistry

from cachesvc.app import Daemon
from cachesvc.clock import SYSTEM_CLOCK, Clock
from cachesvc.config import Config, parse_config, proxy_environment
from tests.clock import AdvancingClock
from tests.fakes.auth import TokenService, running_service
from tests.fakes.registry import FakeRegistry, running
from tests.tls_upstream import make_pki


def make_config(storage: Path, upstreams: dict[str, list[str]], **extra: Any) -> Config:
    """A config with port 0 listeners; registry names map to endpoint URL lists.

    ``proxy_environment={"HTTPS_PROXY": ...}`` stands for the variables the CLI would read.
    """
    environment = extra.pop("proxy_environment", {})
    registries: dict[str, Any] = {}
    for name, endpoints in upstreams.items():
        registries[name] = {"endpoints": endpoints, **extra.pop(f"registry:{name}", {})}
    data: dict[str, Any] = {
        "listen": "127.0.0.1:0",
        "admin": {"listen": "127.0.0.1:0"},
        "storage": {"root": str(storage)},
        "default_registry": next(iter(upstreams)),
        "registries": registries,
        "log": {"level": "warning"},
        "shutdown_grace": "2s",
        "timeouts": {"connect": "2s", "first_byte": "5s", "stall": "2s"},
    }
    data.update(extra)
    return replace(parse_config(data), proxy_environment=proxy_environment(environment))


@asynccontextmanager
async def daemon_for(config: Config, clock: Clock = SYSTEM_CLOCK) -> AsyncIterator[Daemon]:
    """A started daemon on its own metrics registry; stopped afterwards."""
    daemon = Daemon(config, CollectorRegistry(), clock)
    await daemon.start()
    try:
        yield daemon
    finally:
        await daemon.stop()


StartDaemon = Callable[..., AbstractAsyncContextManager[Daemon]]
"""The type of the ``start_daemon`` fixture."""


def with_settings(
    start_daemon: StartDaemon, fake: FakeRegistry, **settings: object
) -> AbstractAsyncContextManager[Daemon]:
    """cachesvc in front of ``fake`` as registry ``fake.test`` with these registry settings."""
    return start_daemon({"fake.test": [fake.url]}, **{"registry:fake.test": settings})


def blob_url(daemon: Daemon, digest: str, repo: str = "team/app") -> str:
    """The mirror URL of a blob of registry ``fake.test``."""
    return f"{daemon.mirror_url}/v2/{repo}/blobs/{digest}?ns=fake.test"


@pytest.fixture
def storage(tmp_path: Path) -> Path:
    return tmp_path / "store"


@pytest.fixture
async def fake() -> AsyncIterator[FakeRegistry]:
    async with running(FakeRegistry()) as registry:
        yield registry


@pytest.fixture
def clock() -> AdvancingClock:
    """The clock of the test's daemons: ``clock.advance(s)`` instead of sleeping for a TTL."""
    return AdvancingClock()


@pytest.fixture
def start_daemon(storage: Path, clock: AdvancingClock) -> StartDaemon:
    """``async with start_daemon({"reg": [url]}, **config) as d``, on the ``clock`` fixture."""

    def factory(
        upstreams: dict[str, list[str]], **extra: Any
    ) -> AbstractAsyncContextManager[Daemon]:
        return daemon_for(make_config(storage, upstreams, **extra), clock)

    return factory


@pytest.fixture
async def mirror(fake: FakeRegistry, start_daemon: StartDaemon) -> AsyncIterator[Daemon]:
    """cachesvc in front of the fake upstream, registered as registry ``fake.test``."""
    async with start_daemon({"fake.test": [fake.url]}) as daemon:
        yield daemon


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(auto_decompress=False) as session:
        yield session


@pytest.fixture
async def tokens() -> AsyncIterator[TokenService]:
    """A fake token service; set it as ``fake.gate`` to put the fake registry behind it."""
    async with running_service(TokenService()) as service:
        yield service


@pytest.fixture
def pki(tmp_path: Path) -> dict[str, Any]:
    """CA, server (127.0.0.1) and client certificates as files (``tests.tls_upstream``)."""
    return make_pki(tmp_path)
