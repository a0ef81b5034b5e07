"""SIGTERM to a ``python -m cachesvc serve`` process while blobs are being transferred."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import aiohttp
import pytest
import yaml

from tests.fakes.registry import FakeRegistry
from tests.peers.ports import free_port

ROOT = Path(__file__).resolve().parent.parent


@asynccontextmanager
async def serve_process(
    tmp_path: Path, fake: FakeRegistry, grace: str
) -> AsyncIterator[tuple[asyncio.subprocess.Process, str, Path]]:
    storage = tmp_path / "store"
    port, admin_port = free_port(), free_port()
    config = tmp_path / "cachesvc.yaml"
    config.write_text(yaml.safe_dump({
        "listen": f"127.0.0.1:{port}", "admin": {"listen": f"127.0.0.1:{admin_port}"},
        "storage": {"root": str(storage)}, "shutdown_grace": grace,
        "registries": {"fake.test": {"endpoints": [fake.url]}}, "default_registry": "fake.test",
        "timeouts": {"stall": "30s"},
    }))  # fmt: skip
    env = {k: v for k, v in os.environ.items() if not k.startswith("CACHESVC_")}
    env["PYTHONPATH"] = str(ROOT)
    log_fd = os.open(tmp_path / "serve.log", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "cachesvc", "serve", "--config", str(config),
            stdout=asyncio.subprocess.DEVNULL, stderr=log_fd, env=env,
        )  # fmt: skip
    finally:
        os.close(log_fd)
    try:
        async with aiohttp.ClientSession() as http, asyncio.timeout(20):
            while True:
                try:
                    async with http.get(f"http://127.0.0.1:{admin_port}/readyz") as resp:
                        if resp.status == 200:
                            break
                except aiohttp.ClientError:
                    pass
                assert proc.returncode is None, (tmp_path / "serve.log").read_text()
                await asyncio.sleep(0.05)
        yield proc, f"http://127.0.0.1:{port}", storage
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


def blob_path(storage: Path, digest: str) -> Path:
    """Where the store keeps a committed blob."""
    hexdigest = digest.split(":")[1]
    return storage / "blobs" / "sha256" / hexdigest[:2] / hexdigest


async def test_sigterm_lets_a_transfer_finish_within_the_deadline_and_exits_0(
    fake: FakeRegistry, tmp_path: Path
) -> None:
    data = os.urandom(3 * 1024 * 1024)
    digest = fake.add_blob(data)
    fake.faults.slow_chunk_delay = 0.02  # 48 chunks: about 1 s upstream
    async with serve_process(tmp_path, fake, "15s") as (proc, url, storage):
        async with aiohttp.ClientSession() as http, http.get(
            f"{url}/v2/team/app/blobs/{digest}?ns=fake.test"
        ) as resp:
            first = await resp.content.readexactly(64 * 1024)
            proc.send_signal(signal.SIGTERM)
            rest = await resp.read()
        assert first + rest == data
        async with asyncio.timeout(20):
            assert await proc.wait() == 0, (tmp_path / "serve.log").read_text()
        assert os.listdir(storage / "tmp") == []
        assert blob_path(storage, digest).stat().st_size == len(data)


async def test_sigterm_aborts_what_outlives_the_deadline_and_leaves_nothing(
    fake: FakeRegistry, tmp_path: Path
) -> None:
    data = os.urandom(4 * 1024 * 1024)
    digest = fake.add_blob(data)
    fake.faults.slow_chunk_delay = 0.2  # 64 chunks: about 13 s upstream
    async with serve_process(tmp_path, fake, "1s") as (proc, url, storage):
        async with aiohttp.ClientSession() as http, http.get(
            f"{url}/v2/team/app/blobs/{digest}?ns=fake.test"
        ) as resp:
            await resp.content.readexactly(1024)
            started = time.monotonic()
            proc.send_signal(signal.SIGTERM)
            with pytest.raises(aiohttp.ClientPayloadError):
                await resp.read()  # cut, never a clean short body
        async with asyncio.timeout(10):
            assert await proc.wait() == 0, (tmp_path / "serve.log").read_text()
        assert time.monotonic() - started < 6
        assert os.listdir(storage / "tmp") == []
        assert not blob_path(storage, digest).exists()
