"""SIGTERM to a ``python -m cachesvc serve`` process while blobs are being transferred."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import aiohttp
import pytest

from tests.fakes.registry import FakeRegistry
from tests.peers_fixtures import CachesvcProcess
from tests.polling import eventually


def serve_process(tmp_path: Path, fake: FakeRegistry, grace: str) -> CachesvcProcess:
    """cachesvc in front of ``fake`` (registry ``fake.test``) with this shutdown grace."""
    return CachesvcProcess(
        tmp_path / "cachesvc",
        {"fake.test": [fake.url]},
        extra={"shutdown_grace": grace, "timeouts": {"stall": "30s"}},
    )


async def test_sigterm_lets_a_transfer_finish_within_the_deadline_and_exits_0(
    fake: FakeRegistry, tmp_path: Path
) -> None:
    data = os.urandom(3 * 1024 * 1024)
    digest = fake.add_blob(data)
    fake.faults.slow_chunk_delay = 0.02  # 48 chunks: about 1 s upstream
    with serve_process(tmp_path, fake, "15s") as cachesvc:
        async with (
            aiohttp.ClientSession() as http,
            http.get(f"{cachesvc.mirror_url}/v2/team/app/blobs/{digest}?ns=fake.test") as resp,
        ):
            first = await resp.content.readexactly(64 * 1024)
            os.kill(cachesvc.pid, signal.SIGTERM)
            rest = await resp.read()
        assert first + rest == data
        assert await eventually(lambda: cachesvc.returncode() is not None, within=20)
        assert cachesvc.returncode() == 0, cachesvc.describe()
        assert os.listdir(cachesvc.tmp_dir) == []
        assert cachesvc.blob_path(digest).stat().st_size == len(data)


async def test_sigterm_aborts_what_outlives_the_deadline_and_leaves_nothing(
    fake: FakeRegistry, tmp_path: Path
) -> None:
    data = os.urandom(4 * 1024 * 1024)
    digest = fake.add_blob(data)
    fake.faults.slow_chunk_delay = 0.2  # 64 chunks: about 13 s upstream
    with serve_process(tmp_path, fake, "1s") as cachesvc:
        async with (
            aiohttp.ClientSession() as http,
            http.get(f"{cachesvc.mirror_url}/v2/team/app/blobs/{digest}?ns=fake.test") as resp,
        ):
            await resp.content.readexactly(1024)
            started = time.monotonic()
            os.kill(cachesvc.pid, signal.SIGTERM)
            with pytest.raises(aiohttp.ClientPayloadError):
                await resp.read()  # cut, never a clean short body
        assert await eventually(lambda: cachesvc.returncode() is not None, within=10)
        assert cachesvc.returncode() == 0, cachesvc.describe()
        assert time.monotonic() - started < 6
        assert os.listdir(cachesvc.tmp_dir) == []
        assert not cachesvc.blob_path(digest).exists()
