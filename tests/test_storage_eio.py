"""Issue 11, read errors: a stored file the disk cannot read (EIO from a real FUSE layer,
``tests.peers.eiofs``) is never answered as a hit: the connection is cut (or a clear OCI
error is sent before the status line), the log says it is a read error, the blob is
dropped from the index and the next request refetches it; ``/admin/v1/images`` keeps
answering."""

from __future__ import annotations

import asyncio
import json
import logging
import os
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest

from tests.conftest import blob_url, daemon_for, make_config
from tests.fakes.registry import OCI_MANIFEST, FakeRegistry
from tests.operator import admin_with_token, auth
from tests.peers.eiofs import eio_filesystem


@pytest.fixture
def eio_storage(tmp_path: Path) -> Iterator[tuple[Path, Path]]:
    """A storage root whose ``blobs/`` and ``tmp/`` are on the EIO filesystem (one
    filesystem, so commits still rename); the index stays on the local disk."""
    root, control = tmp_path / "store", tmp_path / "eio-files"
    with eio_filesystem(tmp_path / "backing", tmp_path / "mnt", control) as mount:
        root.mkdir()
        for name in ("blobs", "tmp"):
            (mount / name).mkdir()
            (root / name).symlink_to(mount / name)
        yield root, control


async def _get(http: aiohttp.ClientSession, url: str, **kw: object) -> tuple[int, bytes]:
    try:
        async with asyncio.timeout(20), http.get(url, **kw) as resp:  # type: ignore[arg-type]
            return resp.status, await resp.read()
    except aiohttp.ClientPayloadError:
        return 0, b""  # cut mid-body


@pytest.mark.parametrize("restart", [False, True], ids=["verified", "after-restart"])
async def test_an_unreadable_blob_is_dropped_and_refetched(
    fake: FakeRegistry, eio_storage: tuple[Path, Path], http: aiohttp.ClientSession,
    caplog: pytest.LogCaptureFixture, restart: bool,
) -> None:  # fmt: skip
    """Verified (sent zero-copy) or not yet verified (hashed while sent): the same rule."""
    root, control = eio_storage
    data = os.urandom(300_000)
    digest = fake.add_blob(data)
    config = make_config(root, {"fake.test": [fake.url]})
    async with daemon_for(config) as d:
        assert await _get(http, blob_url(d, digest)) == (200, data)
        await asyncio.sleep(0)  # committed right after the answer
    control.write_text(digest.split(":")[1] + "\n")
    async with daemon_for(config) as d:
        if not restart:  # verified by this daemon first: then the hit is sent zero-copy
            control.write_text("")
            assert await _get(http, blob_url(d, digest)) == (200, data)
            control.write_text(digest.split(":")[1] + "\n")
        with caplog.at_level(logging.ERROR, "cachesvc.store"):
            status, body = await _get(http, blob_url(d, digest))
        assert body != data, "an unreadable blob was answered whole"
        assert status in (0, 503), status
        assert any("read_error" in r.getMessage() for r in caplog.records), caplog.text
        control.write_text("")
        assert await _get(http, blob_url(d, digest)) == (200, data), "not refetched"
    assert fake.count("GET", "/blobs/") == 2


async def test_the_inventory_answers_with_an_unreadable_manifest(
    fake: FakeRegistry, eio_storage: tuple[Path, Path], http: aiohttp.ClientSession
) -> None:
    root, control = eio_storage
    digest, _ = fake.add_image("team/app", "v1", [b"layer"])
    async with admin_with_token(root, fake) as d:
        url = f"{d.mirror_url}/v2/team/app/manifests/v1?ns=fake.test"
        assert (await _get(http, url, headers={"Accept": OCI_MANIFEST}))[0] == 200
        control.write_text(digest.split(":")[1] + "\n")
        async with http.get(f"{d.admin_url}/admin/v1/images", headers=auth()) as resp:
            assert resp.status == 200, await resp.text()
            listed = await resp.json()
    assert digest in json.dumps(listed)
