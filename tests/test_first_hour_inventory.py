"""``cachesvc images``' LAST PULLED is when a client pulled that image: a prewarm of another
image that shares a layer (and the config) with it does not move it; a pull of it does."""

from __future__ import annotations

import json
import os
from pathlib import Path

import aiohttp

from tests.fakes.registry import OCI_MANIFEST, FakeRegistry
from tests.operator import admin_daemon, write_token
from tests.test_cli_admin import admin_args, run_cli


async def _pull(http: aiohttp.ClientSession, mirror: str, repo: str, tag: str) -> None:
    """What containerd does: the manifest by tag, then every blob it names."""
    base = f"{mirror}/v2/{repo}"
    async with http.get(f"{base}/manifests/{tag}?ns=fake.test",
                        headers={"Accept": OCI_MANIFEST}) as resp:  # fmt: skip
        assert resp.status == 200
        manifest = json.loads(await resp.read())
    for descriptor in [manifest["config"], *manifest["layers"]]:
        async with http.get(f"{base}/blobs/{descriptor['digest']}?ns=fake.test") as resp:
            assert resp.status == 200
            await resp.read()


async def _last_pulled(args: list[str], repository: str) -> float:
    code, out, err = await run_cli("images", "--json", "--repository", repository, *args)
    assert code == 0, err
    (row,) = json.loads(out)
    return float(row["last_pulled"])


async def test_last_pulled_moves_only_when_that_image_is_pulled(
    fake: FakeRegistry, storage: Path, tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    shared = os.urandom(40_000)
    fake.add_image("team/a", "1", [shared, os.urandom(1000)])
    fake.add_image("team/b", "1", [shared, os.urandom(2000)])
    token = write_token(tmp_path / "token")
    async with admin_daemon(storage, fake, token) as daemon:
        admin = admin_args(daemon, token)
        await _pull(http, daemon.mirror_url, "team/a", "1")
        first = await _last_pulled(admin, "team/a")
        assert first > 0

        code, out, err = await run_cli("prewarm", "fake.test/team/b:1", *admin)
        assert code == 0, (out, err)
        assert "2 of 3 blobs already cached" in out  # the shared layer and config were read
        assert await _last_pulled(admin, "team/a") == first

        await _pull(http, daemon.mirror_url, "team/a", "1")
        assert await _last_pulled(admin, "team/a") > first
