"""``kill -9`` of a cachesvc process in the middle of a blob fill, then a restart.

A throttling proxy between cachesvc and the real registry makes the fill of a 64 MiB blob
take seconds, so the daemon is killed while its temp file under ``<storage>/tmp`` grows.
Throughout, a watcher checks that nothing ever appears at the blob's final path before the
digest was verified; after the restart the temp leftovers are gone and the next request
fetches the blob again, whole and correct.
"""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

import aiohttp
import pytest

from tests.peers.images import LayerSpec, OCIImage, build_image, push
from tests.peers.registry import DistributionRegistry, blob_path
from tests.peers_fixtures import (
    CachesvcProcess,
    MiB,
    ThrottleProxy,
    get_sha256,
    registry,
    sha256_file,
    wait_until_quiet,
)
from tests.polling import eventually

__all__ = ["registry"]  # fixture imported for pytest

pytestmark = [pytest.mark.peers, pytest.mark.timeout(60)]

BIG = 64 * MiB
KILL_AFTER = 8 * MiB  # bytes in the temp file before the daemon is killed


@pytest.fixture(scope="module")
def big(registry: DistributionRegistry, tmp_path_factory: pytest.TempPathFactory) -> OCIImage:
    image = build_image(
        tmp_path_factory.mktemp("layout"), "v1", [LayerSpec(BIG, seed=51, compression="none")]
    )
    assert push(image, None, registry.ref("big", "v1")) == image.digest
    return image


async def _get(url: str) -> tuple[int, int, str]:
    """GET ``url`` streaming; (status, body size, sha256) — raises if the connection dies."""
    timeout = aiohttp.ClientTimeout(total=40)
    async with aiohttp.ClientSession(
        timeout=timeout, auto_decompress=False, trust_env=False
    ) as session:
        return await get_sha256(session, url)


async def test_kill_9_during_a_fill_leaves_nothing_and_the_restart_fetches_again(
    registry: DistributionRegistry, big: OCIImage, tmp_path: Path
) -> None:
    (layer,) = big.single.layers
    digest, hexdigest = layer.digest, layer.digest.split(":")[1]
    before = registry.count_blob_gets("big", digest)
    proxy = ThrottleProxy(registry.url, chunk=256 * 1024, delay=0.02)  # ~12 MiB/s
    async with proxy.running():
        daemon = CachesvcProcess(tmp_path / "cachesvc", {registry.host_port: [proxy.url]})
        await asyncio.to_thread(daemon.start)
        try:
            final = daemon.blob_path(digest)

            def url() -> str:  # the ports change with every start
                return f"{daemon.mirror_url}/v2/big/blobs/{digest}?ns={registry.host_port}"

            seen_at_final: list[int] = []  # temp sizes at moments the final path existed

            def temp_files() -> list[Path]:
                return [p for p in daemon.tmp_dir.iterdir() if p.name.startswith(hexdigest)]

            async def watch() -> None:
                while True:
                    if final.exists():
                        seen_at_final.append(sum(p.stat().st_size for p in temp_files()))
                    await asyncio.sleep(0.002)

            watcher = asyncio.create_task(watch())
            client = asyncio.create_task(_get(url()))
            try:
                # -- wait until the fill is well under way, then kill -9 ---------------------
                async with asyncio.timeout(20):
                    while True:
                        temps = temp_files()
                        if temps and temps[0].stat().st_size >= KILL_AFTER:
                            break
                        assert not client.done(), "the fill ended before it could be caught"
                        await asyncio.sleep(0.005)
                assert not final.exists()
                await asyncio.to_thread(daemon.kill9)
                # The client saw a cut connection, never a complete body.
                with contextlib.suppress(aiohttp.ClientError, asyncio.IncompleteReadError):
                    _, size, _ = await client
                    assert size < layer.size, "a complete body got out before the kill"
                leftovers = temp_files()
                assert leftovers, "kill -9 should leave the partial temp file behind"
                assert all(p.stat().st_size < layer.size for p in leftovers)
                assert not final.exists()
                assert seen_at_final == [], "something sat at the final path during the fill"
            finally:
                watcher.cancel()
                client.cancel()
                await asyncio.gather(watcher, client, return_exceptions=True)

            # -- restart on the same storage: leftovers removed at start-up ------------------
            proxy.throttled = False
            await asyncio.to_thread(daemon.start)
            assert list(daemon.tmp_dir.iterdir()) == []
            assert not final.exists()

            # -- pull again: a fresh fill, whole and verified -----------------------------
            assert await _get(url()) == (200, layer.size, digest)
            # The commit (fsync + rename) lands just after the verified bytes went out.
            assert await eventually(final.exists)
            assert sha256_file(final) == digest
            assert list(daemon.tmp_dir.iterdir()) == []
            # ... and then a hit, with no further upstream request.
            assert await _get(url()) == (200, layer.size, digest)
            name = registry.host_port
            assert (
                daemon.metric("cachesvc_requests_total", kind="blob", result="miss", registry=name)
                == 1
            )
            assert (
                daemon.metric("cachesvc_requests_total", kind="blob", result="hit", registry=name)
                == 1
            )
            await asyncio.to_thread(wait_until_quiet, registry)
            gets = registry.requests("GET", blob_path("big", digest))
            assert len(gets) == before + 2  # the killed fill and the one after the restart
            assert gets[-1].size == layer.size
            assert [p for m, p in proxy.requests if m == "GET" and "/blobs/" in p] == [
                f"/v2/big/blobs/{digest}"
            ] * 2
        finally:
            await asyncio.to_thread(daemon.stop)
