"""Cluster mode's peer transport: mTLS with real certificates, and a peer that stalls.

- ``cluster.tls`` with ``ca_file`` (certificates from trustme, one per member with its IP as
  SAN): members fetch from each other over TLS; a client without a certificate is refused
  at the handshake, one with a certificate of another CA too, one with a certificate of the
  cluster's CA (and the token) is served.
- A peer that sends part of a blob and then stalls without closing: after ``timeouts.stall``
  the fill resumes from the next source with a Range request; the client sees no error.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import aiohttp
import pytest
import trustme
from aiohttp import web

from cachesvc.cluster.ranking import BlobKey, ranking
from cachesvc.config.peeraddress import PeerAddress
from tests.cluster_nodes import (
    ClusterNode,
    cluster_of,
    free_port_on,
    running,
    serving_peer_blobs,
    write_tokens,
)
from tests.fakes.registry import FakeRegistry
from tests.polling import eventually
from tests.test_cluster_e2e import blob_gets, fetch

NS = "fake.test"
MiB = 1024 * 1024


def _tls_files(ca: trustme.CA, directory: Path, name: str, *identities: str) -> dict[str, str]:
    directory.mkdir(parents=True, exist_ok=True)
    cert = ca.issue_cert(*identities)
    cert.cert_chain_pems[0].write_to_path(str(directory / f"{name}.crt"))
    cert.private_key_pem.write_to_path(str(directory / f"{name}.key"))
    return {"cert_file": str(directory / f"{name}.crt"), "key_file": str(directory / f"{name}.key")}


def _client(ca_file: Path, cert: dict[str, str] | None) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(ca_file))
    if cert is not None:
        context.load_cert_chain(cert["cert_file"], cert["key_file"])
    return context


def _owned_by(members: list[PeerAddress], owner: PeerAddress, size: int) -> bytes:
    while True:
        data = os.urandom(size)
        if ranking(BlobKey("sha256:" + hashlib.sha256(data).hexdigest()), members)[0] == owner:
            return data


async def test_mtls_between_members_and_a_peer_without_a_client_cert_is_refused(
    fake: FakeRegistry, tmp_path: Path
) -> None:
    ca, other_ca = trustme.CA(), trustme.CA()
    ca_file = tmp_path / "tls" / "ca.pem"
    (tmp_path / "tls").mkdir()
    ca.cert_pem.write_to_path(str(ca_file))
    token = write_tokens(tmp_path / "peer-token", "peer-secret")
    nodes = cluster_of(tmp_path, {NS: [fake.url]}, 2, token)
    for node in nodes:
        files = _tls_files(ca, tmp_path / "tls", node.host, node.host)
        node.cluster["tls"] = {**files, "ca_file": str(ca_file)}
    members = [PeerAddress.parse(n.address) for n in nodes]
    data = _owned_by(members, members[0], MiB)  # node 1 must ask node 0 over TLS
    digest = fake.add_blob(data)
    peer_url = f"https://{nodes[0].address}/v2/team/app/blobs/{digest}?ns={NS}"
    auth = {"Authorization": "Bearer peer-secret"}
    async with running(nodes), aiohttp.ClientSession() as http:
        assert (
            await fetch(http, f"{nodes[1].mirror_url}/v2/team/app/blobs/{digest}?ns={NS}") == data
        )
        assert blob_gets(fake, digest) == 1  # node 0 fetched it; node 1 got it over mTLS
        assert nodes[1].metric("cachesvc_peer_received_bytes_total") == len(data)
        for refused in (None, _tls_files(other_ca, tmp_path / "other", "stranger", "127.0.0.9")):
            with pytest.raises(aiohttp.ClientError):
                async with http.get(peer_url, headers=auth, ssl=_client(ca_file, refused)) as r:
                    await r.read()
        client = _tls_files(ca, tmp_path / "tls", "client", "client.cluster.test")
        async with http.get(peer_url, headers=auth, ssl=_client(ca_file, client)) as resp:
            assert resp.status == 200
            assert await resp.read() == data
        async with http.get(peer_url, ssl=_client(ca_file, client)) as resp:
            assert resp.status == 401  # a certificate is not a token


class StallingPeer:
    """A peer API that sends the first ``after`` bytes of a blob, then nothing, never closing."""

    def __init__(self, fake: FakeRegistry, after: int) -> None:
        self.fake, self.after = fake, after
        self.requests = 0
        self.release = asyncio.Event()

    async def blob(self, request: web.Request) -> web.StreamResponse:
        self.requests += 1
        data = self.fake.blobs[request.match_info["digest"]]
        response = web.StreamResponse(headers={"Content-Length": str(len(data))})
        await response.prepare(request)
        await response.write(data[: self.after])
        await self.release.wait()  # the test's end: the socket stays open until then
        return response

    @asynccontextmanager
    async def serving(self, host: str, port: int) -> AsyncIterator[None]:
        async with serving_peer_blobs(self.blob, host, port):
            try:
                yield
            finally:
                self.release.set()  # before the runner's cleanup waits for this handler


async def test_a_peer_that_stalls_is_resumed_from_upstream_and_the_client_sees_no_error(
    fake: FakeRegistry, tmp_path: Path
) -> None:
    port = free_port_on("127.0.0.3")
    staller_address = PeerAddress("127.0.0.3", port)
    members = [PeerAddress("127.0.0.2", port), staller_address]
    data = _owned_by(members, staller_address, 2 * MiB)
    digest = fake.add_blob(data)
    token = write_tokens(tmp_path / "peer-token", "peer-secret")
    node = ClusterNode(
        tmp_path / "node", {NS: [fake.url]}, host="127.0.0.2", peer_port=port,
        cluster={"token_file": str(token), "peers": [str(m) for m in members]},
        extra={"timeouts": {"connect": "2s", "first_byte": "10s", "stall": "1s"}},
    )  # fmt: skip
    staller = StallingPeer(fake, after=MiB + 12345)
    async with staller.serving("127.0.0.3", port), running([node]), aiohttp.ClientSession() as http:
        url = f"{node.mirror_url}/v2/team/app/blobs/{digest}?ns={NS}"
        assert await fetch(http, url) == data  # one response, complete, no error
        assert staller.requests == 1
        assert fake.ranged_gets == [(digest, MiB + 12345)]  # the rest, from upstream
        assert blob_gets(fake, digest) == 1
        assert node.metric("cachesvc_peer_received_bytes_total") == MiB + 12345
        assert await eventually(node.blob_path(digest).exists)  # committed just after
        assert (await asyncio.to_thread(node.blob_path(digest).read_bytes)) == data
