"""Cluster mode end to end: real daemons on 127.0.0.2.. with their own storage roots, a
counting fake upstream, a fake peer that lies, tokens rotated in a real file, members from a
real dnsmasq. No timed assertions: the fake upstream is slowed only so that transfers
overlap (what a rollout looks like), and every check is a count or a body."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from cachesvc.cluster.ranking import BlobKey, ranking
from cachesvc.config.peeraddress import PeerAddress
from tests.cluster_nodes import (
    ADMIN_TOKEN,
    ClusterNode,
    cluster_of,
    free_port_on,
    running,
    serving_peer_blobs,
    write_tokens,
)
from tests.fakes.registry import OCI_MANIFEST, FakeRegistry
from tests.peers.dns import Dnsmasq
from tests.polling import eventually

NS = "fake.test"
MiB = 1024 * 1024


async def fetch(http: aiohttp.ClientSession, url: str, **headers: str) -> bytes:
    async with http.get(url, headers=headers) as resp:
        assert resp.status == 200, (url, resp.status, await resp.text())
        return await resp.read()


async def pull(
    http: aiohttp.ClientSession, node: ClusterNode, repo: str, tag: str
) -> dict[str, str]:
    """A client pull: the tag, then every blob; digest -> sha256 of what arrived."""
    base = f"{node.mirror_url}/v2/{repo}"
    manifest = await fetch(http, f"{base}/manifests/{tag}?ns={NS}", Accept=OCI_MANIFEST)
    parsed = json.loads(manifest)
    digests = [parsed["config"]["digest"]] + [layer["digest"] for layer in parsed["layers"]]
    bodies = await asyncio.gather(*(fetch(http, f"{base}/blobs/{d}?ns={NS}") for d in digests))
    return {
        d: "sha256:" + hashlib.sha256(b).hexdigest() for d, b in zip(digests, bodies, strict=True)
    }


async def admin(http: aiohttp.ClientSession, node: ClusterNode, query: str = "") -> Any:
    url = f"{node.admin_url}/admin/v1/cluster{query}"
    async with http.get(url, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}) as resp:
        assert resp.status == 200, await resp.text()
        return await resp.json()


def blob_gets(fake: FakeRegistry, digest: str) -> int:
    return fake.count("GET", f"/blobs/{digest}")


async def test_four_daemons_pull_one_image_with_one_upstream_get_per_blob(
    fake: FakeRegistry, tmp_path: Path
) -> None:
    layers = [os.urandom(3 * MiB) for _ in range(3)]
    _, digests = fake.add_image("team/app", "v1", layers)
    fake.faults.slow_chunk_delay = 0.01  # transfers overlap, as in a rollout
    token = write_tokens(tmp_path / "peer-token", "peer-secret")
    nodes = cluster_of(tmp_path, {NS: [fake.url]}, 4, token)
    async with running(nodes), aiohttp.ClientSession() as http:
        pulled = await asyncio.gather(*(pull(http, n, "team/app", "v1") for n in nodes))
        for result in pulled:
            assert result == {d: d for d in digests}  # every body correct, on every node
        for digest in digests:
            assert blob_gets(fake, digest) == 1, fake.requests
        tag_lookups = fake.count("GET", "/manifests/v1") + fake.count("HEAD", "/manifests/v1")
        assert tag_lookups == 1, fake.requests

        # Counted when each peer-sourced fill settles, just after its last bytes went out.
        def avoided() -> float:
            return sum(n.metric("cachesvc_upstream_fetches_avoided_total") for n in nodes)

        assert await eventually(lambda: avoided() >= 3 * len(digests)), avoided()
        for node in nodes:  # each node keeps its own verified copy
            assert await eventually(lambda n=node: all(n.blob_path(d).exists() for d in digests))
        status = await admin(http, nodes[0], f"?digest={digests[1]}")
        assert status["self"] == nodes[0].address
        assert status["members"] == sorted(n.address for n in nodes)
        assert status["owner"] == status["ranking"][0]
        assert len(status["ranking"]) == 4
        assert {p["state"] for p in status["peers"]} == {"ok"}


async def test_the_upstream_fetcher_killed_mid_transfer_costs_at_most_one_more_get(
    fake: FakeRegistry, tmp_path: Path
) -> None:
    data = os.urandom(6 * MiB)
    digest = fake.add_blob(data)
    fake.faults.slow_chunk_delay = 0.03  # 96 chunks of 64 KiB: seconds, long enough to kill
    token = write_tokens(tmp_path / "peer-token", "peer-secret")
    nodes = cluster_of(tmp_path, {NS: [fake.url]}, 4, token)
    members = [PeerAddress.parse(n.address) for n in nodes]
    owner_address = str(ranking(BlobKey(digest), members)[0])
    owner = next(n for n in nodes if n.address == owner_address)
    others = [n for n in nodes if n is not owner]
    async with running(nodes), aiohttp.ClientSession() as http:
        url = f"/v2/team/app/blobs/{digest}?ns={NS}"
        pulls = [asyncio.ensure_future(fetch(http, n.mirror_url + url)) for n in others]
        # The owner made the one upstream GET; kill it once every node is streaming.
        assert await eventually(lambda: len(fake.requests) > 0 and blob_gets(fake, digest) == 1)
        assert await eventually(
            lambda: all(n.metric("cachesvc_peer_received_bytes_total") > MiB for n in others),
            within=30,
        )
        await asyncio.to_thread(owner.kill9)
        bodies = await asyncio.gather(*pulls)
        assert all(body == data for body in bodies)
        assert blob_gets(fake, digest) <= 2, fake.requests
        assert [start > 0 for _, start in fake.ranged_gets] == [True] * len(fake.ranged_gets)
        assert len(fake.ranged_gets) <= 1
        for node in others:
            assert await eventually(node.blob_path(digest).exists)


class LyingPeer:
    """A peer API that accepts any token and sends every blob with one byte flipped."""

    def __init__(self, fake: FakeRegistry) -> None:
        self.fake = fake
        self.requests = 0

    async def blob(self, request: web.Request) -> web.StreamResponse:
        self.requests += 1
        data = self.fake.blobs[request.match_info["digest"]]
        return web.Response(body=data[:-1] + bytes([data[-1] ^ 0xFF]))

    def serving(self, host: str, port: int) -> AbstractAsyncContextManager[None]:
        return serving_peer_blobs(self.blob, host, port)


async def test_a_peer_sending_wrong_bytes_is_blocked_and_nothing_wrong_is_kept(
    fake: FakeRegistry, tmp_path: Path
) -> None:
    port = free_port_on("127.0.0.3")
    liar_address = PeerAddress("127.0.0.3", port)
    members = [PeerAddress("127.0.0.2", port), liar_address]
    while True:  # a blob the lying peer owns, so the daemon asks it first
        data = os.urandom(MiB)
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        if ranking(BlobKey(digest), members)[0] == liar_address:
            break
    fake.add_blob(data)
    token = write_tokens(tmp_path / "peer-token", "peer-secret")
    node = ClusterNode(
        tmp_path / "node", {NS: [fake.url]}, host="127.0.0.2", peer_port=port,
        cluster={"token_file": str(token), "peers": [str(m) for m in members]},
    )  # fmt: skip
    liar = LyingPeer(fake)
    url = f"{node.mirror_url}/v2/team/app/blobs/{digest}?ns={NS}"
    async with liar.serving("127.0.0.3", port), running([node]), aiohttp.ClientSession() as http:
        url = f"{node.mirror_url}/v2/team/app/blobs/{digest}?ns={NS}"
        got = b""
        try:
            async with http.get(url) as resp:
                got = await resp.read()
        except aiohttp.ClientPayloadError:
            pass  # cut: never a complete wrong body
        assert liar.requests == 1
        assert got != data[:-1] + bytes([data[-1] ^ 0xFF])  # not served complete
        assert not node.blob_path(digest).exists()  # not kept
        status = await admin(http, node)
        assert status["peers"][0]["address"] == str(liar_address)
        assert status["peers"][0]["state"] == "blocked"
        assert node.metric("cachesvc_peers_blocked_total") == 1
        # The client's retry (containerd retries) completes from the next source: upstream.
        assert await fetch(http, url) == data
        assert liar.requests == 1
        assert blob_gets(fake, digest) == 1
        assert await eventually(node.blob_path(digest).exists)  # committed just after


async def test_peer_api_tokens_none_wrong_rotated_and_overlapping(
    fake: FakeRegistry, tmp_path: Path
) -> None:
    digest = fake.add_blob(b"layer bytes")
    token = write_tokens(tmp_path / "peer-token", "old-secret")
    (node,) = cluster_of(tmp_path, {NS: [fake.url]}, 1, token)
    url = f"{node.peer_url}/v2/team/app/blobs/{digest}?ns={NS}"

    async def status(http: aiohttp.ClientSession, token: str | None) -> tuple[int, bytes]:
        headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
        async with http.get(url, headers=headers) as resp:
            return resp.status, await resp.read()

    async with running([node]), aiohttp.ClientSession() as http:
        assert await status(http, None) == (401, b"")
        assert await status(http, "wrong") == (401, b"")
        async with http.get(url, headers={"Authorization": "Basic b2xkLXNlY3JldA=="}) as resp:
            assert resp.status == 401
        assert await status(http, "old-secret") == (200, b"layer bytes")
        write_tokens(token, "new-secret", "old-secret")  # the overlap: either works
        assert await eventually(lambda: True)  # let the loop run

        async def accepted(t: str) -> bool:
            return (await status(http, t))[0] == 200

        for _ in range(300):
            if await accepted("new-secret"):
                break
            await asyncio.sleep(0.02)
        assert await accepted("new-secret")
        assert await accepted("old-secret")
        write_tokens(token, "new-secret")  # rotation done: the old one is refused
        for _ in range(300):
            if not await accepted("old-secret"):
                break
            await asyncio.sleep(0.02)
        assert await status(http, "old-secret") == (401, b"")
        assert await accepted("new-secret")
        # Only pull paths: no tag lists, no admin, no writes.
        auth = {"Authorization": "Bearer new-secret"}
        async with http.get(f"{node.peer_url}/v2/team/app/tags/list?ns={NS}", headers=auth) as r:
            assert r.status == 405
        async with http.put(url, headers=auth) as r:
            assert r.status == 405
        async with http.get(f"{node.peer_url}/admin/v1/cluster", headers=auth) as r:
            assert r.status == 404
        log = node.log_path.read_text()
        assert "secret" not in log


async def test_members_follow_dnsmasq_and_survive_its_outage(
    fake: FakeRegistry, tmp_path: Path
) -> None:
    name = "cachesvc-peers.cachesvc.svc.cluster.local"
    dns = Dnsmasq(tmp_path / "dns", {name: ["127.0.0.2"]})
    await asyncio.to_thread(dns.start)
    try:
        token = write_tokens(tmp_path / "peer-token", "peer-secret")
        (node,) = cluster_of(tmp_path, {NS: [fake.url]}, 1, token, settings={
            "peers_dns": f"{name}:0", "dns_servers": [dns.server], "refresh": "0.2s"})  # fmt: skip
        node.cluster["peers_dns"] = f"{name}:{node.peer_port}"
        two = [PeerAddress("127.0.0.2", node.peer_port), PeerAddress("127.0.0.3", node.peer_port)]
        digest = next(  # a digest 127.0.0.3 wins once it is a member
            d
            for d in (f"sha256:{i:064x}" for i in range(1000))
            if ranking(BlobKey(d), two)[0] == two[1]
        )
        async with running([node]), aiohttp.ClientSession() as http:
            before = await admin(http, node, f"?digest={digest}")
            assert before["members"] == [node.address]
            assert before["owner"] == node.address
            await asyncio.to_thread(dns.set_records, {name: ["127.0.0.2", "127.0.0.3"]})
            members: list[str] = []
            for _ in range(500):
                members = (await admin(http, node))["members"]
                if len(members) == 2:
                    break
                await asyncio.sleep(0.02)
            assert members == sorted(str(m) for m in two)
            moved = await admin(http, node, f"?digest={digest}")
            assert moved["owner"] == str(two[1])
            await asyncio.to_thread(dns.stop)  # outage: the last good members stay
            status: dict[str, Any] = {}
            for _ in range(500):
                status = await admin(http, node, f"?digest={digest}")
                if status["membership_error"]:
                    break
                await asyncio.sleep(0.02)
            assert status["membership_error"]
            assert status["members"] == members
            assert status["owner"] == str(two[1])
    finally:
        await asyncio.to_thread(dns.stop)


async def test_fanout_two_with_six_daemons_never_streams_one_blob_to_more_than_two(
    fake: FakeRegistry, tmp_path: Path
) -> None:
    data = os.urandom(4 * MiB)
    digest = fake.add_blob(data)
    fake.faults.slow_chunk_delay = 0.03  # the owner's fill lasts seconds: every peer joins it
    token = write_tokens(tmp_path / "peer-token", "peer-secret")
    nodes = cluster_of(tmp_path, {NS: [fake.url]}, 6, token, settings={"fanout": 2})
    async with running(nodes), aiohttp.ClientSession() as http:
        url = f"/v2/team/app/blobs/{digest}?ns={NS}"
        bodies = await asyncio.gather(*(fetch(http, n.mirror_url + url) for n in nodes))
        assert all(body == data for body in bodies)
        assert blob_gets(fake, digest) == 1
        peaks = [n.metric("cachesvc_peer_streams_peak") for n in nodes]
        assert max(peaks) <= 2, peaks
        redirected = sum(
            n.metric("cachesvc_peer_requests_total", result="redirected") for n in nodes
        )
        assert redirected >= 1  # five askers, one owner with room for two: a tree formed
