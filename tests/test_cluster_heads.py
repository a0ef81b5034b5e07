"""Blob HEADs in cluster mode are asked of the blob's owner, not of upstream from every node.

Three real daemons, a counting fake upstream: once the owner holds a blob, a HEAD on any
other member is answered from the owner's store (no upstream HEAD at all, where every node
used to HEAD upstream); a HEAD no member can answer still reaches upstream once, at the owner.
"""

from __future__ import annotations

import os
from pathlib import Path

import aiohttp

from cachesvc.cluster.ranking import BlobKey, ranking
from cachesvc.config.peeraddress import PeerAddress
from tests.cluster_nodes import cluster_of, running, write_tokens
from tests.fakes.registry import FakeRegistry
from tests.test_cluster_e2e import fetch

NS = "fake.test"


async def test_blob_heads_are_answered_by_the_owner(fake: FakeRegistry, tmp_path: Path) -> None:
    data, unseen = os.urandom(300_000), os.urandom(4096)
    digest, unseen_digest = fake.add_blob(data), fake.add_blob(unseen)
    token = write_tokens(tmp_path / "peer-token", "peer-secret")
    nodes = cluster_of(tmp_path, {NS: [fake.url]}, 3, token)
    members = [PeerAddress.parse(n.address) for n in nodes]
    owner_address = str(ranking(BlobKey(digest), members)[0])
    owner = next(n for n in nodes if n.address == owner_address)
    others = [n for n in nodes if n is not owner]
    path = f"/v2/team/app/blobs/{digest}?ns={NS}"
    async with running(nodes), aiohttp.ClientSession() as http:
        assert await fetch(http, owner.mirror_url + path) == data
        for node in others:
            async with http.head(node.mirror_url + path) as resp:
                assert resp.status == 200
                assert resp.headers["Content-Length"] == str(len(data))
        assert fake.count("HEAD", f"/blobs/{digest}") == 0, fake.requests
        assert fake.count("GET", f"/blobs/{digest}") == 1
        unseen_owner = str(ranking(BlobKey(unseen_digest), members)[0])
        asker = next(n for n in nodes if n.address != unseen_owner)
        async with http.head(f"{asker.mirror_url}/v2/team/app/blobs/{unseen_digest}?ns={NS}") as r:
            assert r.status == 200
            assert r.headers["Content-Length"] == str(len(unseen))
        assert fake.count("HEAD", f"/blobs/{unseen_digest}") == 1
        missing = "sha256:" + "0" * 64
        async with http.head(f"{asker.mirror_url}/v2/team/app/blobs/{missing}?ns={NS}") as r:
            assert r.status == 404  # the owner's 404 is not trusted: upstream says so too
