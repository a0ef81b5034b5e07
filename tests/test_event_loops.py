"""The daemon as a process on each event loop it supports: every blob path serves bytes.

asyncio has native ``sendfile``; uvloop does not, so hits and lagging followers go through
``cachesvc.server.zerocopy`` there (tested on its own in test_zerocopy.py). Both must give the
same answers."""

from __future__ import annotations

import asyncio
import hashlib
import os
from pathlib import Path

import aiohttp
import pytest

from tests.fakes.registry import FakeRegistry
from tests.peers_fixtures import CachesvcProcess


@pytest.mark.parametrize("event_loop", ["asyncio", "uvloop"])
async def test_fills_ranges_and_hits_on_each_event_loop(
    event_loop: str, fake: FakeRegistry, tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    data = os.urandom(3 * 1024 * 1024 + 17)
    digest = fake.add_blob(data)
    fake.faults.slow_chunk_delay = 0.005  # followers join while the fill runs
    daemon = CachesvcProcess(
        tmp_path / "cachesvc", {"fake.test": [fake.url]}, extra={"event_loop": event_loop}
    )
    await asyncio.to_thread(daemon.start)
    try:
        url = f"{daemon.mirror_url}/v2/team/app/blobs/{digest}?ns=fake.test"

        async def get(headers: dict[str, str] | None = None) -> tuple[int, bytes]:
            async with http.get(url, headers=headers or {}) as resp:
                return resp.status, await resp.read()

        cold = await asyncio.gather(get(), get(), get({"Range": "bytes=100-199"}))
        assert cold[0] == (200, data)
        assert cold[1] == (200, data)
        assert cold[2] == (206, data[100:200])
        assert fake.count("GET", "/blobs/") == 1
        hit = await get()
        assert hit[0] == 200
        assert hashlib.sha256(hit[1]).hexdigest() == digest.split(":")[1]
        assert await get({"Range": "bytes=-10"}) == (206, data[-10:])
    finally:
        await asyncio.to_thread(daemon.stop)
