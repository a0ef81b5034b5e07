"""Manifest path: exact bytes, tag cache per Accept set, HEAD revalidation, stale serving."""

from __future__ import annotations

import asyncio
import json

import aiohttp

from cachesvc.app import Daemon
from cachesvc.oci import Digest
from tests.conftest import StartDaemon, with_settings
from tests.fakes.registry import FakeRegistry

OCI = "application/vnd.oci.image.manifest.v1+json"
DOCKER = "application/vnd.docker.distribution.manifest.v2+json"
CONTAINERD_ACCEPT = (
    "application/vnd.docker.distribution.manifest.v2+json, "
    "application/vnd.docker.distribution.manifest.list.v2+json, "
    "application/vnd.oci.image.manifest.v1+json, application/vnd.oci.image.index.v1+json, */*"
)


def url(daemon: Daemon, ref: str, repo: str = "team/app") -> str:
    return f"{daemon.mirror_url}/v2/{repo}/manifests/{ref}?ns=fake.test"


async def test_by_tag_serves_exact_bytes_and_media_type(
    fake: FakeRegistry, mirror: Daemon, http: aiohttp.ClientSession
) -> None:
    # Unusual whitespace: re-serialising would change the digest.
    body = b'{ "schemaVersion" : 2,\n  "mediaType": "%s", "layers": [] }' % DOCKER.encode()
    digest = fake.add_manifest("team/app", "v1", body, DOCKER)
    for method in ("GET", "HEAD"):
        async with http.request(
            method, url(mirror, "v1"), headers={"Accept": CONTAINERD_ACCEPT}
        ) as resp:
            assert resp.status == 200
            assert resp.headers["Content-Type"] == DOCKER
            assert resp.headers["Docker-Content-Digest"] == digest
            assert resp.headers["Content-Length"] == str(len(body))
            assert resp.headers["OCI-Namespace"] == "fake.test"
            assert await resp.read() == (body if method == "GET" else b"")


async def test_tag_within_ttl_is_answered_from_cache(
    fake: FakeRegistry, mirror: Daemon, http: aiohttp.ClientSession
) -> None:
    fake.add_image("team/app", "v1", [b"layer"])
    for _ in range(5):
        async with http.get(url(mirror, "v1"), headers={"Accept": CONTAINERD_ACCEPT}) as resp:
            assert resp.status == 200
    assert fake.count("GET", "/manifests/v1") == 1
    assert fake.count("HEAD", "/manifests/") == 0


async def test_tag_cache_is_keyed_by_accept_set(
    fake: FakeRegistry, mirror: Daemon, http: aiohttp.ClientSession
) -> None:
    fake.add_image("team/app", "v1", [b"layer"])
    for accept in (OCI, DOCKER, OCI):
        async with http.get(url(mirror, "v1"), headers={"Accept": accept}) as resp:
            assert resp.status == 200
    assert fake.count("GET", "/manifests/v1") == 2


async def test_expired_tag_is_revalidated_with_head_and_follows_a_moved_tag(
    fake: FakeRegistry,
    start_daemon: StartDaemon,
    http: aiohttp.ClientSession,
) -> None:
    first, _ = fake.add_image("team/app", "v1", [b"one"])
    async with with_settings(start_daemon, fake, tag_ttl="0s") as daemon:
        async with http.get(url(daemon, "v1")) as resp:
            assert resp.headers["Docker-Content-Digest"] == first
        async with http.get(url(daemon, "v1")) as resp:
            assert resp.headers["Docker-Content-Digest"] == first
        assert fake.count("GET", "/manifests/v1") == 1
        assert fake.count("HEAD", "/manifests/v1") == 1
        moved, _ = fake.add_image("team/app", "v1", [b"two"])
        async with http.get(url(daemon, "v1")) as resp:
            assert resp.headers["Docker-Content-Digest"] == moved
        assert fake.count("GET", "/manifests/v1") == 2


async def test_stale_tag_is_served_when_upstream_fails(
    fake: FakeRegistry,
    start_daemon: StartDaemon,
    http: aiohttp.ClientSession,
) -> None:
    digest, _ = fake.add_image("team/app", "v1", [b"one"])
    async with with_settings(start_daemon, fake, tag_ttl="0s") as daemon:
        async with http.get(url(daemon, "v1")) as resp:
            assert resp.status == 200
        fake.faults.status = 503
        async with http.get(url(daemon, "v1")) as resp:
            assert resp.status == 200
            assert resp.headers["Docker-Content-Digest"] == digest
            assert "stale" in resp.headers["Warning"]
        async with http.get(url(daemon, "v2")) as resp:
            assert resp.status == 502  # never seen: a clear gateway error, not a hang


async def test_by_digest_is_verified_and_cached(
    fake: FakeRegistry, mirror: Daemon, http: aiohttp.ClientSession
) -> None:
    digest, _ = fake.add_image("team/app", "v1", [b"one"])
    for _ in range(3):
        async with http.get(url(mirror, digest)) as resp:
            assert resp.status == 200
            assert resp.headers["Docker-Content-Digest"] == digest
            assert resp.headers["Content-Type"] == OCI
    assert fake.count("GET", f"/manifests/{digest}") == 1


async def test_manifest_whose_bytes_do_not_match_its_digest_is_refused(
    fake: FakeRegistry, mirror: Daemon, http: aiohttp.ClientSession
) -> None:
    wrong = "sha256:" + "0" * 64
    fake.manifests[f"team/app@{wrong}"] = (OCI, b'{"schemaVersion":2}')
    async with http.get(url(mirror, wrong)) as resp:
        assert resp.status == 502
        assert (await resp.json())["errors"][0]["code"] == "DIGEST_INVALID"
    assert mirror.parts.store.get_manifest(Digest.parse(wrong)) is None


async def test_unknown_manifest_is_404(
    fake: FakeRegistry, mirror: Daemon, http: aiohttp.ClientSession
) -> None:
    async with http.get(url(mirror, "nope")) as resp:
        assert resp.status == 404
        assert (await resp.json())["errors"][0]["code"] == "MANIFEST_UNKNOWN"


async def test_concurrent_cold_tag_requests_share_one_upstream_get(
    fake: FakeRegistry, mirror: Daemon, http: aiohttp.ClientSession
) -> None:
    fake.add_image("team/app", "v1", [b"one"])
    fake.faults.manifest_delay = 0.2

    async def get() -> int:
        async with http.get(url(mirror, "v1")) as resp:
            await resp.read()
            return resp.status

    assert await asyncio.gather(*(get() for _ in range(30))) == [200] * 30
    assert fake.count("GET", "/manifests/v1") == 1


async def test_tags_list_pages_route_back_through_the_mirror(
    fake: FakeRegistry, mirror: Daemon, http: aiohttp.ClientSession
) -> None:
    for tag in ("a", "b", "c"):
        fake.add_image("team/app", tag, [tag.encode()])
    seen: list[str] = []
    next_url: str | None = f"{mirror.mirror_url}/v2/team/app/tags/list?n=2&ns=fake.test"
    while next_url is not None:
        async with http.get(next_url) as resp:
            assert resp.status == 200
            seen += json.loads(await resp.read())["tags"]
            link = resp.headers.get("Link")
        next_url = None
        if link:
            assert "ns=fake.test" in link
            next_url = mirror.mirror_url + link[link.index("<") + 1 : link.index(">")]
    assert seen == ["a", "b", "c"]


async def test_referrers_without_upstream_support_is_an_empty_index(
    fake: FakeRegistry, mirror: Daemon, http: aiohttp.ClientSession
) -> None:
    digest = "sha256:" + "1" * 64
    async with http.get(f"{mirror.mirror_url}/v2/team/app/referrers/{digest}?ns=fake.test") as resp:
        assert resp.status == 200
        body = await resp.json(content_type=None)
        assert body["manifests"] == []


async def test_upstream_is_asked_for_exact_bytes_not_compressed_ones(
    fake: FakeRegistry, mirror: Daemon, http: aiohttp.ClientSession
) -> None:
    digest, _ = fake.add_image("team/app", "v1", [b"one"])
    fake.faults.gzip = "polite"  # compresses whenever the client allows it
    async with http.get(url(mirror, "v1")) as resp:
        assert resp.status == 200
        assert "Content-Encoding" not in resp.headers
        assert resp.headers["Docker-Content-Digest"] == digest
        assert Digest.of(await resp.read()) == Digest.parse(digest)
    assert fake.accept_encodings == ["identity"]


async def test_a_compressed_manifest_is_refused_not_cached(
    fake: FakeRegistry, mirror: Daemon, http: aiohttp.ClientSession
) -> None:
    fake.add_image("team/app", "v1", [b"one"])
    fake.faults.gzip = "always"  # ignores Accept-Encoding
    async with http.get(url(mirror, "v1")) as resp:
        assert resp.status == 502
    fake.faults.gzip = None
    async with http.get(url(mirror, "v1")) as resp:
        assert resp.status == 200
    assert fake.count("GET", "/manifests/v1") == 2


async def test_unknown_accept_values_do_not_mint_cache_keys(
    fake: FakeRegistry, mirror: Daemon, http: aiohttp.ClientSession
) -> None:
    fake.add_image("team/app", "v1", [b"one"])
    for n in range(20):
        headers = {"Accept": f"{OCI}, application/x-junk-{n}"}
        async with http.get(url(mirror, "v1"), headers=headers) as resp:
            assert resp.status == 200
    assert fake.count("GET", "/manifests/v1") == 1


async def test_a_manifest_held_in_memory_answers_like_the_first_fetch(
    fake: FakeRegistry, mirror: Daemon, http: aiohttp.ClientSession
) -> None:
    body = b'{"schemaVersion": 2, "mediaType": "%s", "layers": []}' % DOCKER.encode()
    digest = fake.add_manifest("team/app", "v1", body, DOCKER)
    answers = []
    for method in ("GET", "GET", "HEAD", "HEAD"):
        async with http.request(method, url(mirror, digest)) as resp:
            assert resp.status == 200
            headers = {k.lower(): v for k, v in resp.headers.items() if k != "Date"}
            answers.append((method, headers, await resp.read()))
    first, hit, head, head_hit = answers
    assert first[1] == hit[1] == head[1] == head_hit[1]
    assert hit[1]["etag"] == f'"{digest}"'
    assert hit[1]["content-length"] == str(len(body))
    assert first[2] == hit[2] == body
    assert head[2] == head_hit[2] == b""
    assert fake.count("GET", f"/manifests/{digest}") == 1
    manifests = mirror.parts.mirror.manifests
    held = manifests.held(digest, head=False)
    assert held is not None
    assert (held.body, held.result) == (body, "hit")
    manifests.forget(Digest.parse(digest))  # what a purge does
    assert manifests.held(digest, head=False) is None


async def fetched_by_digest(fake: FakeRegistry, mirror: Daemon, http: aiohttp.ClientSession) -> str:
    """An image's manifest, GET once through ``mirror`` by its digest; returns that digest."""
    digest, _ = fake.add_image("team/app", "v1", [b"one"])
    async with http.get(url(mirror, digest)) as resp:
        assert resp.status == 200
    return digest


async def test_only_the_canonical_digest_text_is_a_memory_hit(
    fake: FakeRegistry, mirror: Daemon, http: aiohttp.ClientSession
) -> None:
    digest = await fetched_by_digest(fake, mirror, http)
    upper = "sha256:" + digest.removeprefix("sha256:").upper()
    async with http.get(url(mirror, upper)) as resp:
        assert resp.status == 400
        assert (await resp.json())["errors"][0]["code"] == "DIGEST_INVALID"
    assert mirror.parts.mirror.manifests.held(upper, head=False) is None


async def test_a_manifest_hit_from_memory_counts_as_a_use_for_eviction(
    fake: FakeRegistry, mirror: Daemon, http: aiohttp.ClientSession
) -> None:
    digest = await fetched_by_digest(fake, mirror, http)
    store = mirror.parts.store
    store.flush_access()
    first = store.last_access(Digest.parse(digest))
    await asyncio.sleep(0.05)
    async with http.get(url(mirror, digest)) as resp:  # held in memory: no disk read
        assert resp.status == 200
    assert store.last_access(Digest.parse(digest)) > first


async def test_a_reference_that_is_no_valid_tag_is_404_with_no_upstream_request(
    fake: FakeRegistry, mirror: Daemon, http: aiohttp.ClientSession
) -> None:
    """The distribution spec (and its conformance suite): neither a digest nor a valid tag
    names no manifest, so 404 MANIFEST_UNKNOWN, and the registry is never asked."""
    fake.add_image("team/app", "v1", [b"one"])
    before = sum(fake.requests.values())
    for reference in (".INVALID", "-leading-dash", "x" * 129, "plus+sign"):
        for method in ("GET", "HEAD"):
            async with http.request(method, url(mirror, reference)) as resp:
                assert resp.status == 404, (reference, method)
                if method == "GET":
                    error = (await resp.json())["errors"][0]
                    assert error["code"] == "MANIFEST_UNKNOWN", reference
                    assert "neither a digest nor a valid tag" in error["message"]
    assert sum(fake.requests.values()) == before, fake.requests
