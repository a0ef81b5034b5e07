"""Issue 11, hostile upstream: answers that are framed, encoded or timed to trick the mirror
into caching wrong bytes, hanging its clients, or poisoning a tag for other clients."""

from __future__ import annotations

import asyncio
import hashlib
import os

import aiohttp
import pytest

from tests.conftest import StartDaemon, blob_url, with_settings
from tests.fakes.hostile import RawRegistry, manifest_bytes, manifest_response, running_raw
from tests.fakes.registry import OCI_MANIFEST, OCI_ONLY_MESSAGE, FakeRegistry

DOCKER_V2 = "application/vnd.docker.distribution.manifest.v2+json"
CONTAINERD_ACCEPT = f"{DOCKER_V2}, {OCI_MANIFEST}, application/vnd.oci.image.index.v1+json, */*"


def _digest(body: bytes) -> str:
    return "sha256:" + hashlib.sha256(body).hexdigest()


async def _manifest(
    http: aiohttp.ClientSession,
    mirror_url: str,
    registry: str,
    tag: str,
    accept: str = OCI_MANIFEST,
) -> tuple[int, bytes]:
    url = f"{mirror_url}/v2/team/app/manifests/{tag}?ns={registry}"
    async with asyncio.timeout(12), http.get(url, headers={"Accept": accept}) as resp:
        return resp.status, await resp.read()


@pytest.mark.parametrize("second_registry", ["same.test", "other.test"])
async def test_an_unsolicited_response_on_an_idle_connection_is_never_taken_as_an_answer(
    second_registry: str, start_daemon: StartDaemon, http: aiohttp.ClientSession
) -> None:
    """Response desync: bytes that arrive on an idle pooled connection must not become the
    next request's response, for this registry or another one on the same host:port."""
    real_a, real_b, evil = manifest_bytes("a"), manifest_bytes("b"), manifest_bytes("evil")
    raw = RawRegistry({"team/app:a": real_a, "team/app:b": real_b})
    raw.unsolicited = manifest_response(evil)
    async with (
        running_raw(raw),
        start_daemon({"same.test": [raw.url], "other.test": [raw.url]}) as d,
    ):
        assert await _manifest(http, d.mirror_url, "same.test", "a") == (200, real_a)
        await asyncio.wait_for(raw.unsolicited_sent.wait(), 5)
        await asyncio.sleep(0.2)  # let the mirror's event loop take the bytes in
        status, body = await _manifest(http, d.mirror_url, second_registry, "b")
        assert body != evil, "the unsolicited response was served (and cached) as tag b"
        assert (status, body) == (200, real_b)
        assert await _manifest(http, d.mirror_url, second_registry, "b") == (200, real_b)


async def test_trailing_bytes_after_a_complete_response_poison_no_later_request(
    start_daemon: StartDaemon, http: aiohttp.ClientSession
) -> None:
    """A response with bytes after its body: that connection must not be reused."""
    real_a, real_b, evil = manifest_bytes("a"), manifest_bytes("b"), manifest_bytes("evil")
    raw = RawRegistry({"team/app:a": real_a, "team/app:b": real_b})
    raw.trailing = manifest_response(evil)
    async with running_raw(raw), start_daemon({"raw.test": [raw.url]}) as d:
        assert await _manifest(http, d.mirror_url, "raw.test", "a") == (200, real_a)
        status, body = await _manifest(http, d.mirror_url, "raw.test", "b")
        assert body != evil, "bytes trailing the answer for tag a were served as tag b"
        assert (status, body) == (200, real_b)


async def test_a_manifest_with_a_transfer_coding_it_does_not_decode_is_refused(
    start_daemon: StartDaemon, http: aiohttp.ClientSession
) -> None:
    """``Transfer-Encoding: gzip, chunked``: either decoded to the exact manifest bytes, or
    refused with a clear 502; never the compressed bytes cached and served as the manifest."""
    real = manifest_bytes("a")
    raw = RawRegistry({"team/app:a": real}, transfer_gzip=True)
    async with running_raw(raw), start_daemon({"raw.test": [raw.url]}) as d:
        status, body = await _manifest(http, d.mirror_url, "raw.test", "a")
        assert (status, body) == (200, real) or (status == 502 and b"Transfer-Encoding" in body), (
            status,
            body[:200],
        )
        if status == 502:  # nothing was cached: the same answer again
            assert (await _manifest(http, d.mirror_url, "raw.test", "a"))[0] == 502


async def test_a_manifest_trickled_a_byte_at_a_time_ends_at_the_first_byte_deadline(
    fake: FakeRegistry, start_daemon: StartDaemon, http: aiohttp.ClientSession
) -> None:
    """Small bodies have a total deadline of ``timeouts.first_byte`` from the request: one byte
    every 0.5 s (never a stall of 2 s) must not hold the client for the ~150 s it would take."""
    fake.add_image("team/app", "v1", [b"layer"])
    fake.faults.manifest_trickle_delay = 0.5
    async with start_daemon(
        {"fake.test": [fake.url]}, timeouts={"connect": "2s", "first_byte": "3s", "stall": "2s"}
    ) as d:
        try:
            status, body = await _manifest(http, d.mirror_url, "fake.test", "v1")
        except TimeoutError:
            pytest.fail("the mirror was still reading a trickled manifest 12 s after the request")
        assert status == 504, (status, body[:200])
        assert b"errors" in body


async def test_first_byte_is_not_capped_by_stall(
    fake: FakeRegistry, start_daemon: StartDaemon, http: aiohttp.ClientSession
) -> None:
    """Headers after 2 s are within ``first_byte: 6s`` even though ``stall`` is 1 s."""
    digest, _ = fake.add_image("team/app", "v1", [b"layer"])
    fake.faults.manifest_delay = 2.0
    async with start_daemon(
        {"fake.test": [fake.url]}, timeouts={"connect": "2s", "first_byte": "6s", "stall": "1s"}
    ) as d:
        status, body = await _manifest(http, d.mirror_url, "fake.test", "v1")
    assert status == 200, body[:300]
    assert _digest(body) == digest


async def test_a_miss_for_one_accept_set_does_not_poison_the_tag_for_another(
    fake: FakeRegistry, start_daemon: StartDaemon, http: aiohttp.ClientSession
) -> None:
    """curl's ``*/*`` against an OCI-only image gets the upstream's 404 with its reason; a
    containerd lookup right after, with OCI in Accept, still gets the manifest."""
    digest, _ = fake.add_image("team/app", "v1", [b"layer"])
    fake.faults.oci_only = True
    async with with_settings(start_daemon, fake, negative_ttl="60s") as d:
        curl = await _manifest(http, d.mirror_url, "fake.test", "v1", accept="*/*")
        status, body = await _manifest(http, d.mirror_url, "fake.test", "v1", CONTAINERD_ACCEPT)
    assert curl[0] == 404
    assert status == 200, f"the */* miss was served to containerd's lookup: {body[:300]!r}"
    assert _digest(body) == digest
    assert OCI_ONLY_MESSAGE.encode() in curl[1], "the upstream's reason is passed on"


async def test_upstream_404s_for_unknown_digests_are_remembered_for_negative_ttl(
    fake: FakeRegistry, start_daemon: StartDaemon, http: aiohttp.ClientSession
) -> None:
    """Blobs and manifests by digest: the second request for the same unknown digest within
    ``negative_ttl`` is answered 404 without asking upstream again."""
    unknown = [_digest(os.urandom(16)) for _ in range(20)]
    async with with_settings(start_daemon, fake, negative_ttl="60s") as d:
        for _ in range(2):
            for digest in unknown[:10]:
                async with http.get(blob_url(d, digest)) as resp:
                    assert resp.status == 404
            for digest in unknown[10:]:
                url = f"{d.mirror_url}/v2/team/app/manifests/{digest}?ns=fake.test"
                async with http.get(url, headers={"Accept": OCI_MANIFEST}) as resp:
                    assert resp.status == 404
    assert fake.count("GET", "/blobs/") + fake.count("HEAD", "/blobs/") == 10
    assert fake.count("GET", "/manifests/") + fake.count("HEAD", "/manifests/") == 10
