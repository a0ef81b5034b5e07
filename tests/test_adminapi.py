"""The /admin/v1 API: Bearer auth, pins that survive restarts and eviction, inventory, purge."""

from __future__ import annotations

import os
from pathlib import Path

import aiohttp

from cachesvc.oci import Digest
from tests.fakes.registry import FakeRegistry
from tests.operator import (
    TOKEN,
    add_index,
    admin_daemon,
    admin_with_token,
    auth,
    submit,
    wait_job,
    write_token,
)
from tests.polling import eventually


async def test_admin_auth_missing_wrong_and_rotated_token(
    fake: FakeRegistry, storage: Path, tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    token_file = write_token(tmp_path / "token")
    async with admin_daemon(storage, fake, token_file) as daemon:
        url = f"{daemon.admin_url}/admin/v1/jobs"
        async with http.get(url) as resp:
            assert resp.status == 401
            assert resp.headers["WWW-Authenticate"].startswith("Bearer")
        async with http.get(url, headers=auth("wrong")) as resp:
            assert resp.status == 401
        async with http.get(url, headers={"Authorization": f"Basic {TOKEN}"}) as resp:
            assert resp.status == 401
        async with http.get(url, headers=auth()) as resp:
            assert resp.status == 200
        # Rotation with an overlap: the file is re-read when it changes, any line is accepted.
        token_file.write_text(f"rotated-token-abcdef\n{TOKEN}\n")
        for token in ("rotated-token-abcdef", TOKEN):
            async with http.get(url, headers=auth(token)) as resp:
                assert resp.status == 200, token
        # The old token removed: it stops working without a restart.
        write_token(token_file, "rotated-token-abcdef")
        async with http.get(url, headers=auth()) as resp:
            assert resp.status == 401
        async with http.get(url, headers=auth("rotated-token-abcdef")) as resp:
            assert resp.status == 200
        # The open endpoints stay open.
        for path in ("/metrics", "/healthz", "/readyz"):
            async with http.get(daemon.admin_url + path) as resp:
                assert resp.status == 200
        # A briefly missing file (a Secret update in flight) keeps the last tokens.
        token_file.unlink()
        async with http.get(url, headers=auth("rotated-token-abcdef")) as resp:
            assert resp.status == 200
        async with http.get(url, headers=auth()) as resp:
            assert resp.status == 401


async def test_admin_api_without_token_file_is_403_with_how_to(
    fake: FakeRegistry, storage: Path, http: aiohttp.ClientSession
) -> None:
    async with admin_daemon(storage, fake, None) as daemon, http.post(
        f"{daemon.admin_url}/admin/v1/prewarm", json={"images": ["a"]}, headers=auth()
    ) as resp:
        assert resp.status == 403
        message = (await resp.json())["error"]["message"]
        assert "admin.token_file" in message


async def test_pins_persist_across_restarts_and_survive_eviction(
    fake: FakeRegistry, storage: Path, http: aiohttp.ClientSession
) -> None:
    _, images = add_index(fake, "team/pinned", "1", {"linux/amd64": [300_000]})
    _, loose_digests = fake.add_image("team/loose", "1", [os.urandom(300_000)])
    pinned_blobs = images["linux/amd64"].blobs
    async with admin_with_token(storage, fake) as daemon:
        job = await wait_job(http, daemon, await submit(
            http, daemon, ["fake.test/team/pinned:1"], platforms=["linux/amd64"], pin=True))  # fmt: skip
        assert job["state"] == "done"
        await wait_job(http, daemon, await submit(http, daemon, ["fake.test/team/loose:1"],
                                                  platforms=["linux/amd64"]))  # fmt: skip
    # Restart with a size bound far below what is stored: only the unpinned image goes.
    async with admin_with_token(storage, fake, max_size=1000) as daemon:
        async with http.get(f"{daemon.admin_url}/admin/v1/pins", headers=auth()) as resp:
            (pin,) = (await resp.json())["pins"]
            assert pin["ref"] == "fake.test/team/pinned:1"
        await daemon.parts.evictor.sweep()  # the background watch may have swept already
        evicted = daemon.metrics.registry.get_sample_value(
            "cachesvc_evictions_total", {"reason": "size"}
        )
        assert evicted is not None
        assert evicted >= 2
        store = daemon.parts.store
        assert all(store.size(Digest.parse(d)) is not None for d in pinned_blobs)
        assert all(store.size(Digest.parse(d)) is None for d in loose_digests)
        # Unpin: now it can go too.
        async with http.delete(
            f"{daemon.admin_url}/admin/v1/pins/fake.test/team/pinned:1", headers=auth()
        ) as resp:
            assert resp.status == 200
        await daemon.parts.evictor.sweep()
        assert store.size(Digest.parse(pinned_blobs[1])) is None  # the 300 kB layer
        assert store.usage_bytes <= 1000
        async with http.delete(
            f"{daemon.admin_url}/admin/v1/pins/fake.test/team/pinned:1", headers=auth()
        ) as resp:
            assert resp.status == 404


async def test_eviction_never_removes_a_blob_being_served(
    fake: FakeRegistry, storage: Path, http: aiohttp.ClientSession
) -> None:
    data = os.urandom(4 * 1024 * 1024)
    digest = fake.add_blob(data)
    async with admin_daemon(storage, fake, None, max_size=1000) as daemon:
        url = f"{daemon.mirror_url}/v2/team/app/blobs/{digest}?ns=fake.test"
        async with http.get(url) as resp:
            assert await resp.read() == data
        # The commit lands just after the verified bytes went out.
        assert await eventually(lambda: daemon.parts.store.size(Digest.parse(digest)) is not None)
        # Take the lease a hit takes, as a response being sent holds it.
        cached = daemon.parts.mirror.blobs.cached(Digest.parse(digest))
        assert cached is not None
        assert cached.lease is not None
        assert await daemon.parts.evictor.sweep() == 0
        assert daemon.parts.store.size(Digest.parse(digest)) == len(data)
        cached.lease.release()
        assert await daemon.parts.evictor.sweep() == 1
        assert daemon.parts.store.size(Digest.parse(digest)) is None
        # Served again after eviction: a plain miss with the right bytes.
        async with http.get(url) as resp:
            assert await resp.read() == data
        skipped = daemon.metrics.registry.get_sample_value(
            "cachesvc_eviction_skipped_total", {"reason": "in_use"}
        )
        assert skipped == 1


async def test_inventory_lists_images_and_purge_keeps_shared_blobs(
    fake: FakeRegistry, storage: Path, http: aiohttp.ClientSession
) -> None:
    shared = os.urandom(200_000)
    _, a_blobs = fake.add_image("team/a", "1", [shared, os.urandom(1000)])
    _, b_blobs = fake.add_image("team/b", "1", [shared, os.urandom(2000)])
    async with admin_with_token(storage, fake) as daemon:
        job = await wait_job(http, daemon, await submit(
            http, daemon, ["fake.test/team/a:1", "fake.test/team/b:1"]))  # fmt: skip
        assert job["state"] == "done"
        async with http.get(f"{daemon.admin_url}/admin/v1/images", headers=auth()) as resp:
            rows = (await resp.json())["images"]
        assert [(r["repository"], r["tags"]) for r in rows] == [("team/a", ["1"]), ("team/b", ["1"])]
        assert rows[0]["platforms"] == ["linux/amd64"]
        assert rows[0]["blobs_cached"] == rows[0]["blobs_total"] == 4
        assert rows[0]["size_bytes"] > 200_000
        assert rows[0]["last_pulled"] > 0
        assert rows[0]["pinned"] is False
        async with http.get(f"{daemon.admin_url}/admin/v1/images?repository=team/b",
                            headers=auth()) as resp:  # fmt: skip
            assert [r["repository"] for r in (await resp.json())["images"]] == ["team/b"]
        async with http.delete(
            f"{daemon.admin_url}/admin/v1/images/fake.test/team/a:1", headers=auth()
        ) as resp:
            result = await resp.json()
            assert resp.status == 200, result
        store = daemon.parts.store
        shared_digest = a_blobs[1]
        assert store.size(Digest.parse(shared_digest)) is not None  # team/b still uses it
        assert store.size(Digest.parse(a_blobs[2])) is None
        assert all(store.size(Digest.parse(d)) is not None for d in b_blobs)
        async with http.get(f"{daemon.admin_url}/admin/v1/images", headers=auth()) as resp:
            assert [r["repository"] for r in (await resp.json())["images"]] == ["team/b"]
        # A pull after the purge fetches the purged parts again and serves them right.
        async with http.get(
            f"{daemon.mirror_url}/v2/team/a/manifests/1?ns=fake.test"
        ) as resp:
            assert resp.status == 200
        async with http.delete(
            f"{daemon.admin_url}/admin/v1/images/fake.test/team/nothing:1", headers=auth()
        ) as resp:
            assert resp.status == 404


async def test_purge_by_digest_needs_the_name_the_image_was_pulled_by(
    fake: FakeRegistry, storage: Path, http: aiohttp.ClientSession
) -> None:
    index, images = add_index(fake, "team/app", "1", {"linux/amd64": [50_000]})
    fake.add_image("team/other", "1", [os.urandom(1000)])
    amd = images["linux/amd64"]
    async with admin_with_token(storage, fake) as daemon:
        job = await wait_job(http, daemon, await submit(
            http, daemon, ["fake.test/team/app:1", "fake.test/team/other:1"],
            platforms=["linux/amd64"]))  # fmt: skip
        assert job["state"] == "done"
        store = daemon.parts.store
        kept = [index, amd.manifest, *amd.blobs]
        assert all(store.size(Digest.parse(d)) is not None for d in kept)
        base = f"{daemon.admin_url}/admin/v1/images/fake.test"
        # The right digest under another repository's name: refused, naming where it is.
        async with http.delete(f"{base}/team/other@{index}", headers=auth()) as resp:
            assert resp.status == 404
            message = (await resp.json())["error"]["message"]
            assert "is cached for fake.test/team/app" in message
        # A platform manifest of a cached index: the index is what can be purged.
        async with http.delete(f"{base}/team/app@{amd.manifest}", headers=auth()) as resp:
            assert resp.status == 404
            assert f"part of the cached index {index}" in (await resp.json())["error"]["message"]
        assert all(store.size(Digest.parse(d)) is not None for d in kept)  # nothing lost
        async with http.delete(f"{base}/team/app@{index}", headers=auth()) as resp:
            result = await resp.json()
            assert resp.status == 200, result
        assert result["repositories"] == ["fake.test/team/app"]
        assert result["blobs_removed"] == 4  # index, manifest, config, layer
        assert all(store.size(Digest.parse(d)) is None for d in kept)


async def test_pinning_a_tag_again_after_it_moved_keeps_both_digests_until_unpinned(
    fake: FakeRegistry, storage: Path, http: aiohttp.ClientSession
) -> None:
    old, _ = fake.add_image("team/app", "1", [os.urandom(1000)])
    async with admin_with_token(storage, fake, **{"registry:fake.test": {"tag_ttl": "0s"}}) as daemon:
        pins_url = f"{daemon.admin_url}/admin/v1/pins"

        async def pin() -> None:
            job = await wait_job(http, daemon, await submit(
                http, daemon, ["fake.test/team/app:1"], platforms=["linux/amd64"], pin=True))  # fmt: skip
            assert job["state"] == "done"

        async def pinned() -> list[str]:
            async with http.get(pins_url, headers=auth()) as resp:
                return [p["digest"] for p in (await resp.json())["pins"]]

        await pin()
        await pin()  # the same digest again: one pin, not two
        assert await pinned() == [old]
        new, _ = fake.add_image("team/app", "1", [os.urandom(1000)])  # the tag moves
        await pin()
        # The old digest may still run on this node: it stays pinned next to the new one.
        assert await pinned() == [old, new]
        async with http.delete(f"{pins_url}/fake.test/team/app@{old}", headers=auth()) as resp:
            assert resp.status == 200
            assert [p["digest"] for p in (await resp.json())["unpinned"]] == [old]
        assert await pinned() == [new]
        await pin()
        async with http.delete(f"{pins_url}/fake.test/team/app:1", headers=auth()) as resp:
            assert [p["digest"] for p in (await resp.json())["unpinned"]] == [new]
        assert await pinned() == []
