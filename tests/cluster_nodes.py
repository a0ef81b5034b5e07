"""Cluster members as real ``cachesvc serve`` processes on 127.0.0.2, 127.0.0.3, ...

Each node binds its mirror, admin and peer listeners on its own loopback address and keeps
its own storage root; all share one peer port (distinct addresses), one token file and one
member list (static, or a DNS name served by dnsmasq). Tests drive them with aiohttp.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from aiohttp import web

from tests.peers.ports import free_port
from tests.peers_fixtures import CachesvcProcess

__all__ = ["ClusterNode", "cluster_of", "free_port_on", "write_tokens"]

ADMIN_TOKEN = "admin-token-for-cluster-tests"


def free_port_on(host: str) -> int:
    """A TCP port free on ``host`` a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def write_tokens(path: Path, *tokens: str) -> Path:
    """A token file, one token per line (the first is sent)."""
    path.write_text("".join(f"{t}\n" for t in tokens))
    return path


class ClusterNode(CachesvcProcess):
    """One member: listeners on ``host``, the peer API on ``host:peer_port``."""

    def __init__(
        self,
        workdir: Path,
        registries: Mapping[str, list[str]],
        *,
        host: str,
        peer_port: int,
        cluster: Mapping[str, Any],
        extra: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(workdir, registries, extra=extra)
        self.host = host
        self.peer_port = peer_port
        self.cluster = dict(cluster)
        self.admin_token = workdir / "admin-token"

    @property
    def address(self) -> str:
        """This member's ``cluster.advertise``."""
        return f"{self.host}:{self.peer_port}"

    @property
    def peer_url(self) -> str:
        return f"http://{self.address}"

    @property
    def mirror_url(self) -> str:
        return f"http://{self.host}:{self.mirror_port}"

    @property
    def admin_url(self) -> str:
        return f"http://{self.host}:{self.admin_port}"

    def config(self) -> dict[str, Any]:
        data = super().config()
        data["listen"] = f"{self.host}:{self.mirror_port}"
        data["admin"] = {
            "listen": f"{self.host}:{self.admin_port}",
            "token_file": str(self.admin_token),
        }
        data["cluster"] = {"listen": self.address, **self.cluster}
        return data

    def _launch(self) -> Any:
        self.workdir.mkdir(parents=True, exist_ok=True)
        write_tokens(self.admin_token, ADMIN_TOKEN)
        process = super()._launch()  # picks 127.0.0.1 ports; rebind them on our host
        self.mirror_port = free_port_on(self.host)
        self.admin_port = free_port_on(self.host)
        self.config_path.write_text(__import__("yaml").safe_dump(self.config()))
        return process


def cluster_of(
    root: Path,
    registries: Mapping[str, list[str]],
    count: int,
    token_file: Path,
    *,
    settings: Mapping[str, Any] | None = None,
    peers: Sequence[str] | None = None,
    extra: Mapping[str, Any] | None = None,
) -> list[ClusterNode]:
    """``count`` members on 127.0.0.2.. with a static member list (unless ``settings`` names
    ``peers_dns``); not started."""
    peer_port = free_port()
    hosts = [f"127.0.0.{2 + i}" for i in range(count)]
    cluster: dict[str, Any] = {"token_file": str(token_file), **(settings or {})}
    if "peers_dns" not in cluster:
        cluster["peers"] = list(peers) if peers is not None else [f"{h}:{peer_port}" for h in hosts]
    return [
        ClusterNode(
            root / f"node{i}",
            registries,
            host=h,
            peer_port=peer_port,
            cluster=cluster,
            extra=extra,
        )
        for i, h in enumerate(hosts)
    ]


@asynccontextmanager
async def running(nodes: Sequence[ClusterNode]) -> AsyncIterator[Sequence[ClusterNode]]:
    """Start every node (in threads: the fake upstream keeps answering meanwhile)."""
    try:
        await asyncio.gather(*(asyncio.to_thread(n.start) for n in nodes))
        yield nodes
    finally:
        await asyncio.gather(*(asyncio.to_thread(n.stop) for n in nodes))


@asynccontextmanager
async def serving_peer_blobs(
    blob: Callable[[web.Request], Awaitable[web.StreamResponse]], host: str, port: int
) -> AsyncIterator[None]:
    """A fake peer on ``host:port`` answering the peer API's blob path with ``blob``."""
    app = web.Application()
    app.router.add_get("/v2/{name:.+}/blobs/{digest}", blob)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    try:
        yield
    finally:
        await runner.cleanup()
