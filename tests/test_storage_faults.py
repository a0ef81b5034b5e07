"""Issue 11, storage faults: files changed behind the daemon's back, a full disk, a lost
index, and a pinned prewarm killed half-way. Restarts are a second daemon on the same
storage (in-process) or ``CachesvcProcess`` (SIGKILL)."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import aiohttp
import pytest

from tests.conftest import StartDaemon, blob_url, daemon_for, make_config
from tests.fakes.registry import OCI_MANIFEST, FakeRegistry, running
from tests.operator import admin_with_token, auth, submit, wait_job, write_token
from tests.peers.smallfs import fill, small_filesystem
from tests.peers_fixtures import CachesvcProcess
from tests.polling import eventually


def _stored(storage: Path, digest: str) -> Path:
    hexdigest = digest.split(":", 1)[1]
    return storage / "blobs" / "sha256" / hexdigest[:2] / hexdigest


def _corrupt(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF  # same size, same name, wrong bytes
    os.chmod(path, 0o644)
    path.write_bytes(bytes(data))


async def _read(http: aiohttp.ClientSession, url: str, **kw: object) -> tuple[int, bytes]:
    async with asyncio.timeout(20), http.get(url, **kw) as resp:  # type: ignore[arg-type]
        return resp.status, await resp.read()


async def test_a_blob_replaced_on_disk_is_never_served_as_complete_after_a_restart(
    fake: FakeRegistry, start_daemon: StartDaemon, storage: Path, http: aiohttp.ClientSession
) -> None:
    data = os.urandom(200_000)
    digest = fake.add_blob(data)
    async with start_daemon({"fake.test": [fake.url]}) as d:
        assert await _read(http, blob_url(d, digest)) == (200, data)
    _corrupt(_stored(storage, digest))
    async with start_daemon({"fake.test": [fake.url]}) as d:
        try:
            _, body = await _read(http, blob_url(d, digest))
        except aiohttp.ClientPayloadError:
            body = b""  # aborted before the last bytes: what the rule asks for
        assert body != data[:-1] + bytes([data[-1] ^ 0xFF]), "the corrupted file was served whole"
        assert await _read(http, blob_url(d, digest)) == (200, data), "the next request refetches"
    assert fake.count("GET", "/blobs/") == 2


async def test_a_manifest_replaced_on_disk_is_not_served_after_a_restart(
    fake: FakeRegistry, start_daemon: StartDaemon, storage: Path, http: aiohttp.ClientSession
) -> None:
    digest, _ = fake.add_image("team/app", "v1", [b"layer"])
    url = f"/v2/team/app/manifests/{digest}?ns=fake.test"
    async with start_daemon({"fake.test": [fake.url]}) as d:
        good = await _read(http, d.mirror_url + url, headers={"Accept": OCI_MANIFEST})
    assert good[0] == 200
    _corrupt(_stored(storage, digest))
    async with start_daemon({"fake.test": [fake.url]}) as d:
        try:
            answer = await _read(http, d.mirror_url + url, headers={"Accept": OCI_MANIFEST})
        except aiohttp.ClientPayloadError:
            answer = (0, b"")
    assert answer[1] in (b"", good[1]), "a manifest whose bytes do not match its digest was served"


async def test_verify_finds_a_corrupted_blob_from_the_cli(
    fake: FakeRegistry, start_daemon: StartDaemon, storage: Path, http: aiohttp.ClientSession,
    tmp_path: Path,
) -> None:  # fmt: skip
    """``cachesvc verify --config FILE`` checks the whole store, names the bad file, exits 1."""
    good, bad = os.urandom(5000), os.urandom(5000)
    good_digest, bad_digest = fake.add_blob(good), fake.add_blob(bad)
    async with start_daemon({"fake.test": [fake.url]}) as d:
        for digest in (good_digest, bad_digest):
            assert (await _read(http, blob_url(d, digest)))[0] == 200
        assert await eventually(_stored(storage, bad_digest).exists)
    _corrupt(_stored(storage, bad_digest))
    config = tmp_path / "verify.json"
    config.write_text(json.dumps({
        "storage": {"root": str(storage)}, "default_registry": "fake.test",
        "registries": {"fake.test": {"endpoints": [fake.url]}},
    }))  # fmt: skip
    done = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "cachesvc", "verify", "--config", str(config)],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 1, done.stderr[-2000:]
    assert bad_digest in done.stdout + done.stderr
    assert good_digest not in (done.stdout + done.stderr).replace("checked", "")


async def test_verify_from_the_admin_api(
    fake: FakeRegistry, storage: Path, http: aiohttp.ClientSession
) -> None:
    """``POST /admin/v1/verify`` starts a whole-store check; its job reports the mismatch."""
    data = os.urandom(5000)
    digest = fake.add_blob(data)
    async with admin_with_token(storage, fake) as d:
        assert (await _read(http, blob_url(d, digest)))[0] == 200
        assert await eventually(_stored(storage, digest).exists)  # committed after the answer
        _corrupt(_stored(storage, digest))
        async with http.post(f"{d.admin_url}/admin/v1/verify", headers=auth()) as resp:
            started = await resp.json(content_type=None)
            assert resp.status == 202, started
        job = await wait_job(http, d, str(started["id"]))
    assert digest in json.dumps(job)


async def test_a_full_disk_gives_clear_oci_errors_and_leaves_no_temp_files(
    fake: FakeRegistry, storage: Path, http: aiohttp.ClientSession
) -> None:
    digest, _ = fake.add_image("team/app", "v1", [b"layer"])
    blob = fake.add_blob(os.urandom(300_000))
    with small_filesystem(storage.parent / "small", "1m") as small:
        root = small / "store"
        async with daemon_for(make_config(root, {"fake.test": [fake.url]})) as d:
            fill(small)
            url = f"{d.mirror_url}/v2/team/app/manifests/v1?ns=fake.test"
            async with http.get(url, headers={"Accept": OCI_MANIFEST}) as resp:
                body = await resp.read()
                manifest = (resp.status, resp.content_type, body)
            try:
                blob_answer = await _read(http, blob_url(d, blob))
            except aiohttp.ClientPayloadError:
                blob_answer = (0, b"")
            async with http.get(f"{d.admin_url}/readyz") as resp:
                ready = (resp.status, await resp.text())
            temp = sorted((root / "tmp").iterdir())
    ok = manifest[0] == 200 and manifest[2] == fake.manifests["team/app:v1"][1]
    assert ok or (manifest[1] == "application/json" and b'"errors"' in manifest[2]), manifest
    assert blob_answer[0] != 500 or b'"errors"' in blob_answer[1], blob_answer[:2]
    assert temp == [], f"temp files left behind: {temp}"
    assert ready[0] == 503, ready
    assert "storage" in ready[1].lower()
    del digest


async def test_a_lost_index_is_rebuilt_from_the_files_and_pins_survive(
    fake: FakeRegistry, storage: Path, http: aiohttp.ClientSession
) -> None:
    """Delete ``index/`` while stopped: manifests on disk are served by digest with upstream
    down, and the pin made before is still listed."""
    digest, _ = fake.add_image("team/app", "v1", [b"layer"])
    async with admin_with_token(storage, fake) as d:
        job = await wait_job(http, d, await submit(http, d, ["fake.test/team/app:v1"], pin=True))
        assert job["state"] == "done", job
    shutil.rmtree(storage / "index")
    fake.faults.status = 503
    async with admin_with_token(storage, fake) as d:
        url = f"{d.mirror_url}/v2/team/app/manifests/{digest}?ns=fake.test"
        status, _ = await _read(http, url, headers={"Accept": OCI_MANIFEST})
        async with http.get(f"{d.admin_url}/admin/v1/pins", headers=auth()) as resp:
            pins = await resp.json()
    assert status == 200, "a manifest on disk was not served after the index was lost"
    assert digest in json.dumps(pins), pins


@pytest.mark.timeout(90)
async def test_a_pinned_prewarm_killed_half_way_is_reported_incomplete(tmp_path: Path) -> None:
    """SIGKILL while a ``pin: true`` prewarm holds a layer mid-body: after the restart the
    pinned image is reported incomplete (inventory) and a new prewarm completes it."""
    fake = FakeRegistry()
    fake.add_image("team/app", "v1", [os.urandom(100_000), os.urandom(2_000_000)])
    fake.faults.hold_after = 1_000_000
    token = write_token(tmp_path / "admin-token")
    async with running(fake):
        svc = CachesvcProcess(
            tmp_path / "svc", {"fake.test": [fake.url]},
        )  # fmt: skip
        await asyncio.to_thread(_start_with_token, svc, token)
        try:
            async with aiohttp.ClientSession() as http:
                async with http.post(
                    f"{svc.admin_url}/admin/v1/prewarm", headers=auth(),
                    json={"images": ["fake.test/team/app:v1"], "pin": True},
                ) as resp:  # fmt: skip
                    assert resp.status == 202
                # config, small layer, the held one
                assert await eventually(lambda: fake.count("GET", "/blobs/") >= 3, within=20)
                await asyncio.sleep(0.3)
                svc.kill9()
                fake.faults.hold_after = None
                fake.faults.resume.set()
                await asyncio.to_thread(_start_with_token, svc, token)
                async with http.get(f"{svc.admin_url}/admin/v1/images", headers=auth()) as resp:
                    images = (await resp.json())["images"]
        finally:
            svc.stop()
    rows = [r for r in images if "v1" in json.dumps(r)]
    assert len(rows) == 1, f"the pinned image is not in the inventory: {images}"
    (row,) = rows
    assert row.get("pinned"), row
    assert row.get("complete") is False, f"an incomplete pinned image is not reported: {row}"


def _start_with_token(svc: CachesvcProcess, token: Path) -> None:
    """Start with the admin token file (CachesvcProcess picks the admin port itself)."""
    original = svc.config

    def config() -> dict[str, object]:
        data = original()
        data["admin"] = {**data["admin"], "token_file": str(token)}
        return data

    svc.config = config  # type: ignore[method-assign]
    svc.start()
