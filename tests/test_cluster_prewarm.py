"""Cluster prewarm end to end: three real daemons on 127.0.0.2-4, a counting fake upstream.

``POST /admin/v1/prewarm`` with ``"scope": "cluster"`` on one node: every member ends with
the image, the fake upstream sees one GET per blob and one tag lookup, and the one job id
shows each member's part. The peer prewarm route refuses what the issue does not allow.
``cachesvc prewarm --cluster`` drives the same through the CLI. Checks are counts, bodies and
states; the loops only wait for a job to end (no timed assertions).
"""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path
from typing import Any

import aiohttp

from tests.cluster_nodes import ADMIN_TOKEN, ClusterNode, cluster_of, running, write_tokens
from tests.fakes.registry import FakeRegistry
from tests.polling import eventually
from tests.test_cluster_e2e import blob_gets

NS = "fake.test"
MiB = 1024 * 1024
AUTH = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


async def submit(http: aiohttp.ClientSession, node: ClusterNode, body: dict[str, Any]) -> Any:
    async with http.post(f"{node.admin_url}/admin/v1/prewarm", json=body, headers=AUTH) as resp:
        return resp.status, await resp.json()


async def finished(http: aiohttp.ClientSession, node: ClusterNode, job_id: str) -> Any:
    """The job once it has ended (polled; the test's own timeout bounds it)."""
    while True:
        async with http.get(f"{node.admin_url}/admin/v1/jobs/{job_id}", headers=AUTH) as resp:
            assert resp.status == 200, await resp.text()
            job = await resp.json()
        if job["state"] not in ("queued", "running"):
            return job
        await asyncio.sleep(0.1)


async def test_a_cluster_prewarm_fills_every_member_with_one_upstream_get_per_blob(
    fake: FakeRegistry, tmp_path: Path
) -> None:
    layers = [os.urandom(2 * MiB) for _ in range(3)]
    _, digests = fake.add_image("team/app", "v1", layers)
    fake.faults.slow_chunk_delay = 0.005  # the members' parts overlap, as in a rollout
    token = write_tokens(tmp_path / "peer-token", "peer-secret")
    nodes = cluster_of(tmp_path, {NS: [fake.url]}, 3, token)
    async with running(nodes), aiohttp.ClientSession() as http:
        status, answer = await submit(
            http, nodes[0], {"images": [f"{NS}/team/app:v1"], "scope": "cluster"}
        )
        assert status == 202, answer
        assert answer["scope"] == "cluster"
        job = await finished(http, nodes[0], answer["id"])
        assert job["state"] == "done", job
        members = {m["address"]: m for m in job["members"]}
        assert set(members) == {n.address for n in nodes}
        assert [m["self"] for m in job["members"] if m["address"] == nodes[0].address] == [True]
        total = sum(len(b) for b in layers) + len(fake.blobs[digests[0]])
        for member in members.values():
            assert member["state"] == "done", member
            assert member["bytes_done"] == member["bytes_total"] == total
            assert member["blobs_done"] == member["blobs_total"] == len(digests)
            assert member["job"]
        assert job["bytes_done"] == 3 * total
        assert len(job["images"]) == 3  # one row per member and image
        for digest in digests:
            assert blob_gets(fake, digest) == 1, fake.requests
        tag_lookups = fake.count("GET", "/manifests/v1") + fake.count("HEAD", "/manifests/v1")
        assert tag_lookups == 1, fake.requests
        for node in nodes:
            for digest in digests:
                assert await eventually(node.blob_path(digest).exists)
                assert node.blob_path(digest).read_bytes() == fake.blobs[digest]
        async with http.get(f"{nodes[0].admin_url}/admin/v1/jobs", headers=AUTH) as resp:
            listed = (await resp.json())["jobs"]
        assert answer["id"] in {j["id"] for j in listed}


async def test_the_peer_prewarm_route_offers_only_a_prewarm_of_configured_registries(
    fake: FakeRegistry, tmp_path: Path
) -> None:
    fake.add_image("team/app", "v1", [b"layer"])
    token = write_tokens(tmp_path / "peer-token", "peer-secret")
    nodes = cluster_of(tmp_path, {NS: [fake.url]}, 1, token)
    url = f"{nodes[0].peer_url}/cluster/v1/prewarm"
    peer = {"Authorization": "Bearer peer-secret"}
    async with running(nodes), aiohttp.ClientSession() as http:
        body = {"images": [f"{NS}/team/app:v1"]}
        async with http.post(url, json=body) as resp:
            assert (resp.status, await resp.read()) == (401, b"")
        async with http.post(url, json=body, headers={"Authorization": "Bearer wrong"}) as resp:
            assert resp.status == 401
        for bad, status in (
            ({"images": ["ghcr.io/evil/app:1"]}, 400),  # not a configured registry
            ({"images": [f"{NS}/team/app:v1"], "pin": True}, 400),  # no pins from peers
            ({"images": "not a list"}, 400),
            ({"images": []}, 400),
        ):
            async with http.post(url, json=bad, headers=peer) as resp:
                assert resp.status == status, (bad, await resp.text())
        async with http.post(url, data=b"{", headers=peer) as resp:
            assert resp.status == 400
        async with http.post(url, json=body, headers=peer) as resp:
            assert resp.status == 202
            job_id = (await resp.json())["id"]
        while True:
            async with http.get(f"{url}/{job_id}", headers=peer) as resp:
                assert resp.status == 200
                if (await resp.json())["state"] == "done":
                    break
            await asyncio.sleep(0.05)
        # An admin-submitted job is invisible to peers, and so is its list.
        status, admin_job = await submit(http, nodes[0], body)
        assert status == 202
        async with http.get(f"{url}/{admin_job['id']}", headers=peer) as resp:
            assert resp.status == 404
        async with http.delete(f"{url}/{admin_job['id']}", headers=peer) as resp:
            assert resp.status == 404
        async with http.get(url, headers=peer) as resp:
            assert resp.status == 405
        # scope cluster with pin is refused on the admin API too, naming why.
        status, refused = await submit(http, nodes[0], {**body, "scope": "cluster", "pin": True})
        assert status == 400
        assert "pin" in refused["error"]["message"]
        status, refused = await submit(http, nodes[0], {**body, "scope": "everywhere"})
        assert status == 400


async def test_cachesvc_prewarm_cluster_shows_every_member_and_exits_0(
    fake: FakeRegistry, tmp_path: Path
) -> None:
    _, digests = fake.add_image("team/app", "v2", [os.urandom(MiB), os.urandom(MiB)])
    token = write_tokens(tmp_path / "peer-token", "peer-secret")
    nodes = cluster_of(tmp_path, {NS: [fake.url]}, 3, token)
    async with running(nodes):
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "cachesvc", "prewarm", "--cluster", f"{NS}/team/app:v2",
            "--admin", nodes[1].admin_url, "--token-file", str(nodes[1].admin_token),
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        out, err = await proc.communicate()
        text = out.decode()
        assert proc.returncode == 0, (text, err.decode())
        assert "on 3 members" in text
        for node in nodes:
            assert f"{node.address} {NS}/team/app:v2: done" in text
        assert "3 of 3 images done" in text
        for digest in digests:
            assert blob_gets(fake, digest) == 1
            for node in nodes:
                assert await eventually(node.blob_path(digest).exists)
