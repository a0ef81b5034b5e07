"""Prewarm jobs through the admin API, against the fake upstream (counted there)."""

from __future__ import annotations

import asyncio
import hashlib
import os
from pathlib import Path

import aiohttp

from cachesvc.oci import Digest
from cachesvc.ops.prewarm import node_platform, platform_matches
from tests.fakes.registry import FakeRegistry
from tests.operator import add_index, admin_with_token, auth, submit, wait_job
from tests.polling import eventually


async def test_multi_arch_prewarm_fetches_only_the_requested_platform(
    fake: FakeRegistry, storage: Path, http: aiohttp.ClientSession
) -> None:
    _, images = add_index(
        fake, "team/app", "1.0", {"linux/amd64": [50_000, 70_000], "linux/arm64": [60_000, 80_000]}
    )
    async with admin_with_token(storage, fake) as daemon:
        job_id = await submit(http, daemon, ["fake.test/team/app:1.0"], platforms=["linux/arm64"])
        job = await wait_job(http, daemon, job_id)
        assert job["state"] == "done", job
        (image,) = job["images"]
        arm, amd = images["linux/arm64"], images["linux/amd64"]
        assert image["platforms"] == ["linux/arm64"]
        for digest in arm.blobs:
            assert fake.count("GET", f"/blobs/{digest}") == 1
            assert daemon.parts.store.size(Digest.parse(digest)) is not None
        for digest in amd.blobs:
            assert fake.count("GET", f"/blobs/{digest}") == 0
        assert fake.count("GET", f"/manifests/{amd.manifest}") == 0
        # Progress figures add up to the descriptors of the chosen platform.
        assert image["blobs_total"] == image["blobs_done"] == len(arm.blobs)
        assert image["bytes_total"] == image["bytes_done"] == sum(arm.sizes)
        assert job["bytes_total"] == job["bytes_done"] == sum(arm.sizes)
        assert job["started"] <= job["finished"]
        # Again: everything already cached counts as done at once, nothing goes upstream.
        before = sum(fake.requests.values())
        job = await wait_job(http, daemon, await submit(http, daemon, ["fake.test/team/app:1.0"],
                                                        platforms=["linux/arm64"]))  # fmt: skip
        assert job["state"] == "done"
        assert job["bytes_done"] == sum(arm.sizes)
        assert fake.count("GET", "/blobs/") == len(arm.blobs)
        assert sum(fake.requests.values()) - before <= 1  # at most the tag revalidation


async def test_default_platform_is_the_nodes_own(
    fake: FakeRegistry, storage: Path, http: aiohttp.ClientSession
) -> None:
    other = "linux/s390x" if node_platform() != "linux/s390x" else "linux/ppc64le"
    _, images = add_index(fake, "team/app", "2", {node_platform(): [1000], other: [2000]})
    async with admin_with_token(storage, fake) as daemon:
        job = await wait_job(http, daemon, await submit(http, daemon, ["fake.test/team/app:2"]))
        assert job["state"] == "done"
        assert job["platforms"] == [node_platform()]
        assert fake.count("GET", f"/blobs/{images[other].blobs[1]}") == 0


async def test_prewarm_racing_a_pull_shares_one_upstream_get_per_blob(
    fake: FakeRegistry, storage: Path, http: aiohttp.ClientSession
) -> None:
    _, images = add_index(fake, "team/app", "3", {"linux/amd64": [3_000_000, 2_000_000]})
    amd = images["linux/amd64"]
    fake.faults.slow_chunk_delay = 0.01  # keep fills running while both sides ask
    async with admin_with_token(storage, fake) as daemon:

        async def pull(digest: str) -> str:
            url = f"{daemon.mirror_url}/v2/team/app/blobs/{digest}?ns=fake.test"
            async with http.get(url) as resp:
                assert resp.status == 200
                return "sha256:" + hashlib.sha256(await resp.read()).hexdigest()

        job_id = await submit(http, daemon, ["fake.test/team/app:3"], platforms=["linux/amd64"])
        pulled = await asyncio.gather(*(pull(d) for d in amd.blobs))
        job = await wait_job(http, daemon, job_id)
        assert pulled == amd.blobs
        assert job["state"] == "done", job
        for digest in amd.blobs:
            assert fake.count("GET", f"/blobs/{digest}") == 1, digest


async def test_failures_carry_a_reason_and_cancel_stops_a_job(
    fake: FakeRegistry, storage: Path, http: aiohttp.ClientSession
) -> None:
    fake.add_image("team/ok", "1", [os.urandom(1000)])
    add_index(fake, "team/arm", "1", {"linux/arm64": [100]})
    async with admin_with_token(storage, fake) as daemon:
        job = await wait_job(http, daemon, await submit(
            http, daemon, ["fake.test/team/ok:1", "fake.test/team/missing:1",
                           "fake.test/team/arm:1"], platforms=["linux/amd64"]))  # fmt: skip
        states = {i["ref"]: (i["state"], i["reason"]) for i in job["images"]}
        assert job["state"] == "failed"
        assert states["fake.test/team/ok:1"] == ("done", None)
        assert states["fake.test/team/missing:1"][0] == "failed"
        assert "not found" in states["fake.test/team/missing:1"][1]
        assert "no manifest for linux/amd64" in states["fake.test/team/arm:1"][1]

        _, (_, big_layer) = fake.add_image("team/big", "1", [os.urandom(2_000_000)])
        fake.faults.slow_chunk_delay = 0.05
        job_id = await submit(http, daemon, ["fake.test/team/big:1"])
        layer = Digest.parse(big_layer)
        # Cancel while the layer's fill is under way.
        assert await eventually(lambda: daemon.parts.fills.get(layer) is not None)
        async with http.delete(f"{daemon.admin_url}/admin/v1/jobs/{job_id}", headers=auth()) as r:
            assert r.status == 202
        job = await wait_job(http, daemon, job_id)
        assert job["state"] == "cancelled"
        assert job["images"][0]["reason"] == "cancelled"
        # The fill itself runs on for other clients; the job just no longer follows it.
        assert daemon.parts.store.size(layer) is None
        assert await eventually(lambda: daemon.parts.store.size(layer) is not None, within=10)


async def test_bad_requests_are_400_with_the_reason(
    fake: FakeRegistry, storage: Path, http: aiohttp.ClientSession
) -> None:
    async with admin_with_token(storage, fake) as daemon:
        url = f"{daemon.admin_url}/admin/v1/prewarm"
        for body in ({"images": []}, {"images": ["UPPER/case"]}, {"images": ["x"], "pin": "yes"},
                     {"images": ["unknown.example/a:1"]}, {"images": ["a"], "platforms": ["x"]}):  # fmt: skip
            async with http.post(url, json=body, headers=auth()) as resp:
                assert resp.status == 400, body
                assert (await resp.json())["error"]["message"]
        async with http.get(f"{daemon.admin_url}/admin/v1/jobs/nope", headers=auth()) as resp:
            assert resp.status == 404


def test_platform_matching() -> None:
    assert platform_matches("linux/arm64", "linux/arm64/v8")
    assert platform_matches("linux/arm64/v8", "linux/arm64/v8")
    assert not platform_matches("linux/arm64/v8", "linux/arm64")
    assert not platform_matches("linux/amd64", "linux/arm64")
    assert not platform_matches("linux/amd64", None)
