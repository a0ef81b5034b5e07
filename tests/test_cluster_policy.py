"""The peer API is no way around the policy: two real daemons under ``allow`` and ``verify``,
a counting fake upstream. A member (holding the cluster token) asking another member's peer
API for a repository outside ``allow`` or for an unsigned manifest gets 403 DENIED, and the
refused repository costs no upstream request; a client asking a non-owner gets the same
answer whatever the owner said (each member applies its own policy)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import aiohttp
import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from tests.cluster_nodes import cluster_of, running, write_tokens
from tests.fakes.registry import OCI_MANIFEST, FakeRegistry
from tests.peers import cosign

pytestmark = pytest.mark.timeout(120)

NS = "fake.test"
TOKEN = "peer-secret"


async def answer(http: aiohttp.ClientSession, url: str, **headers: str) -> tuple[int, Any]:
    async with http.get(url, headers={"Accept": OCI_MANIFEST, **headers}) as resp:
        if resp.status == 200:
            return 200, await resp.read()
        return resp.status, (await resp.json())["errors"][0]


def secret_requests(fake: FakeRegistry) -> int:
    return sum(n for (_, path), n in fake.requests.items() if path.startswith("/v2/secret/"))


async def test_the_peer_api_applies_allow_and_verify_like_the_mirror_api(
    fake: FakeRegistry, tmp_path: Path
) -> None:
    unsigned, unsigned_blobs = fake.add_image("team/app", "v1", [b"unsigned layer"])
    secret, secret_blobs = fake.add_image("secret/app", "v1", [b"secret layer"])
    key = tmp_path / "release.pub"
    key.write_bytes(cosign.public_pem(ec.generate_private_key(ec.SECP256R1())))
    token = write_tokens(tmp_path / "peer-token", TOKEN)
    policy = {"endpoints": [fake.url], "allow": ["team/*"], "verify": {"keys": [str(key)]}}
    nodes = cluster_of(tmp_path, {NS: [fake.url]}, 2, token, extra={"registries": {NS: policy}})
    auth = {"Authorization": f"Bearer {TOKEN}"}
    async with running(nodes), aiohttp.ClientSession() as http:
        for node in nodes:
            for path in (
                "secret/app/manifests/v1",
                f"secret/app/manifests/{secret}",
                f"secret/app/blobs/{secret_blobs[1]}",
            ):
                status, error = await answer(http, f"{node.peer_url}/v2/{path}?ns={NS}", **auth)
                assert status == 403, (node.address, path, error)
                assert error["code"] == "DENIED"
                assert f"registries.{NS}.allow" in error["message"]
            for reference in ("v1", unsigned):  # by tag and by digest
                url = f"{node.peer_url}/v2/team/app/manifests/{reference}?ns={NS}"
                status, error = await answer(http, url, **auth)
                assert status == 403, (node.address, reference, error)
                assert error["message"].startswith(f"{NS}/team/app: no signature"), error
            assert not node.blob_path(unsigned).exists(), "a refused manifest was stored"
        # A client of either member: refused by that member, whichever owns the digest.
        for node in nodes:
            url = f"{node.mirror_url}/v2/team/app/manifests/{unsigned}?ns={NS}"
            assert (await answer(http, url))[0] == 403
            url = f"{node.mirror_url}/v2/secret/app/blobs/{secret_blobs[0]}?ns={NS}"
            assert (await answer(http, url))[0] == 403
        assert secret_requests(fake) == 0, fake.requests
    assert unsigned_blobs  # the image exists upstream: the refusals are the policy's
