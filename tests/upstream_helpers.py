"""Small helpers shared by the upstream-access tests: credentials files, metrics, a black hole."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import shutil
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from cachesvc.app import Daemon
from tests.peers.ports import refused_url as refused_url  # re-exported for the upstream tests


def docker_config(auths: dict[str, dict[str, str]]) -> bytes:
    return json.dumps({"auths": auths}).encode()


def basic_entry(username: str, password: str) -> dict[str, str]:
    """An ``auths`` entry the way ``kubectl create secret docker-registry`` writes it."""
    return {"auth": base64.b64encode(f"{username}:{password}".encode()).decode()}


class KubeletSecretDir:
    """A Secret volume as kubelet lays it out: ``config.json -> ..data/config.json``,
    ``..data -> ..<timestamp>``; an update writes a new timestamped directory and swaps
    ``..data`` with one atomic rename, then removes the old directory."""

    def __init__(self, root: Path, content: bytes) -> None:
        self.root = root
        self.generation = 0
        root.mkdir(parents=True, exist_ok=True)
        self._current = self._write(content)
        os.symlink(self._current.name, root / "..data")
        os.symlink("..data/config.json", root / "config.json")

    @property
    def path(self) -> Path:
        return self.root / "config.json"

    def _write(self, content: bytes) -> Path:
        self.generation += 1
        directory = self.root / f"..2026_11_26_00_00_{self.generation:02d}.000000001"
        directory.mkdir()
        (directory / "config.json").write_bytes(content)
        return directory

    def update(self, content: bytes) -> None:
        old, new = self._current, self._write(content)
        tmp = self.root / "..data_tmp"
        os.symlink(new.name, tmp)
        os.replace(tmp, self.root / "..data")
        shutil.rmtree(old)
        self._current = new


def editor_replace(path: Path, content: bytes) -> None:
    """Write a sibling file and rename it over ``path`` (vim, sed -i, most tools)."""
    tmp = path.with_name(path.name + ".swp")
    tmp.write_bytes(content)
    os.replace(tmp, path)


def overwrite(path: Path, content: bytes) -> None:
    """Truncate and write in place (same inode)."""
    with path.open("r+b") as f:
        f.truncate(0)
        f.write(content)


Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]
"""Prometheus samples by (name, sorted labels)."""


def parse_metrics(text: str) -> Samples:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def sample(samples: Samples, name: str, **labels: str) -> float:
    """The value of series ``name`` with exactly these labels (0 when absent)."""
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


async def metrics_text(http: aiohttp.ClientSession, daemon: Daemon) -> str:
    async with http.get(f"{daemon.admin_url}/metrics") as resp:
        return await resp.text()


async def metrics(http: aiohttp.ClientSession, daemon: Daemon) -> Samples:
    return parse_metrics(await metrics_text(http, daemon))


async def metric(http: aiohttp.ClientSession, daemon: Daemon, name: str, **labels: str) -> float:
    return sample(await metrics(http, daemon), name, **labels)


@asynccontextmanager
async def black_hole() -> AsyncIterator[str]:
    """An endpoint that accepts connections and never answers; yields its URL."""
    held: list[asyncio.StreamWriter] = []

    async def swallow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)

    server = await asyncio.start_server(swallow, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        for writer in held:
            writer.close()
        server.close()
        await server.wait_closed()
