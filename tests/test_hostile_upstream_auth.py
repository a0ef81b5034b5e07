"""Issue 11, hostile upstream, authentication: a token service that answers an endless body,
huge tokens for many scopes, or a redirect; and credentials that must reach only the hosts
they belong to (the registry's origin, hosts with their own ``auths`` entry, endpoints marked
``credentials: true``, and the token service named by one of those)."""

from __future__ import annotations

import asyncio
import hashlib
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.conftest import StartDaemon, blob_url
from tests.fakes.auth import BasicGate, TokenService, basic, running_service
from tests.fakes.hostile import HostileTokenService, MiB, Recorder, running_app
from tests.fakes.registry import FakeRegistry, running
from tests.peers_fixtures import CachesvcProcess
from tests.test_redirects import _second_loopback
from tests.upstream_helpers import basic_entry, docker_config

USER, PASSWORD = "puller", "s3cret-password"
IDENTITY_TOKEN = "refresh-me-identity-token"


def _credentials(tmp_path: Path, entry: dict[str, str], key: str = "fake.test") -> str:
    path = tmp_path / "config.json"
    path.write_bytes(docker_config({key: entry}))
    return str(path)


@pytest.fixture
async def hostile() -> AsyncIterator[HostileTokenService]:
    service = HostileTokenService()
    async with running_app(service):
        yield service


async def _get(http: aiohttp.ClientSession, url: str) -> tuple[int, bytes]:
    async with asyncio.timeout(30), http.get(url) as resp:
        return resp.status, await resp.read()


async def test_an_endless_token_body_is_cut_at_its_bound(
    fake: FakeRegistry,
    hostile: HostileTokenService,
    start_daemon: StartDaemon,
    http: aiohttp.ClientSession,
) -> None:
    """Token answers are read to at most 1 MiB: the service gets to send little more than that
    (socket buffers) before the mirror hangs up, not the 64 MiB it has on offer."""
    hostile.mode = "endless"
    fake.gate = hostile
    digest = fake.add_blob(b"payload")
    async with start_daemon({"fake.test": [fake.url]}) as d:
        status, body = await _get(http, blob_url(d, digest))
    assert status == 502, body[:300]
    assert hostile.bytes_sent < 8 * MiB, f"the mirror read {hostile.bytes_sent} bytes of a token"


async def test_a_token_over_64_kib_is_refused_with_a_clear_error(
    fake: FakeRegistry,
    hostile: HostileTokenService,
    start_daemon: StartDaemon,
    http: aiohttp.ClientSession,
) -> None:
    hostile.mode, hostile.token_size = "huge", 100 * 1024
    fake.gate = hostile
    digest = fake.add_blob(b"payload")
    async with start_daemon({"fake.test": [fake.url]}) as d:
        status, body = await _get(http, blob_url(d, digest))
    assert status == 502, body[:300]
    assert b"token" in body, body[:300]
    assert b"64" in body, body[:300]
    assert fake.count("GET", "/blobs/") == 1, "the oversized token was sent to the registry"


def _rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


@pytest.mark.timeout(180)
async def test_the_token_cache_is_bounded_whatever_scopes_clients_choose(
    hostile: HostileTokenService, tmp_path: Path
) -> None:
    """1,200 repository names, each its own scope with a 60 KiB token (legal): the daemon must
    not keep 70 MiB of tokens. Measured as the daemon process's resident memory."""
    hostile.mode, hostile.token_size = "huge", 60 * 1024
    fake = FakeRegistry(gate=hostile)
    async with running(fake, max_field_size=128 * 1024):
        await _lookups_in_a_daemon(fake, hostile, tmp_path)


async def _lookups_in_a_daemon(
    fake: FakeRegistry, hostile: HostileTokenService, tmp_path: Path
) -> None:
    with CachesvcProcess(tmp_path / "svc", {"fake.test": [fake.url]}) as svc:
        async with aiohttp.ClientSession() as http:

            async def lookups(names: range) -> None:
                for n in names:
                    url = f"{svc.mirror_url}/v2/team/app{n}/manifests/v1?ns=fake.test"
                    async with http.get(url) as resp:
                        assert resp.status == 404, await resp.text()

            await lookups(range(50))  # warm-up: pools, code paths
            before = _rss(svc.pid)
            await asyncio.gather(*(lookups(range(50 + i, 1250, 16)) for i in range(16)))
            grown = _rss(svc.pid) - before
    assert len(hostile.requests) >= 1200  # every name was its own scope
    assert grown < 30 * MiB, f"the daemon grew by {grown / MiB:.0f} MiB holding tokens"


@pytest.mark.parametrize("kind", ["identitytoken", "basic"])
async def test_a_redirecting_token_service_gets_no_credentials_to_another_host(
    kind: str,
    fake: FakeRegistry,
    hostile: HostileTokenService,
    start_daemon: StartDaemon,
    http: aiohttp.ClientSession,
    tmp_path: Path,
) -> None:
    """The token request is redirected to plain http on another host: neither the identity
    token (re-POSTed in the body by aiohttp's default) nor the Basic credentials arrive."""
    entry = (
        {"identitytoken": IDENTITY_TOKEN}
        if kind == "identitytoken"
        else basic_entry(USER, PASSWORD)
    )
    thief = Recorder()
    async with running_app(thief, host=_second_loopback()):
        hostile.mode, hostile.redirect_to = "redirect", f"{thief.url}/steal"
        fake.gate = hostile
        digest = fake.add_blob(b"payload")
        async with start_daemon(
            {"fake.test": [fake.url]}, credentials_file=_credentials(tmp_path, entry)
        ) as d:
            status, _ = await _get(http, blob_url(d, digest))
    assert hostile.requests, "the token service was asked"
    leaked = [s for s in thief.seen if IDENTITY_TOKEN in s[3] or (s[2] or "").startswith("Basic")]
    assert not leaked, f"credentials reached the redirect target: {leaked}"
    assert status in (401, 502)


async def _two_endpoint_registry(
    cdn_gate: Any, origin_gate: Any
) -> tuple[FakeRegistry, FakeRegistry, str]:
    data = os.urandom(1000)
    cdn, origin = FakeRegistry(gate=cdn_gate), FakeRegistry(gate=origin_gate)
    for reg in (cdn, origin):
        reg.add_blob(data)
    return cdn, origin, "sha256:" + hashlib.sha256(data).hexdigest()


async def test_a_cdn_endpoint_gets_none_of_the_registrys_credentials(
    start_daemon: StartDaemon, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    """endpoints [CDN, origin]: the CDN challenges Basic and must not get the credentials
    stored under the registry's name (the origin still serves the blob)."""
    cdn, origin, digest = await _two_endpoint_registry(
        BasicGate(USER, PASSWORD), BasicGate(USER, PASSWORD)
    )
    creds = _credentials(tmp_path, basic_entry(USER, PASSWORD))
    async with (
        running(cdn),
        running(origin),
        start_daemon({"fake.test": [cdn.url, origin.url]}, credentials_file=creds) as d,
    ):
        status, _ = await _get(http, blob_url(d, digest))
    assert basic(USER, PASSWORD) not in cdn.auth_seen, "the CDN received the Basic credentials"
    assert basic(USER, PASSWORD) in origin.auth_seen
    assert status == 200


async def test_a_cdn_endpoint_marked_credentials_true_gets_them(
    start_daemon: StartDaemon, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    cdn, origin, digest = await _two_endpoint_registry(BasicGate(USER, PASSWORD), None)
    creds = _credentials(tmp_path, basic_entry(USER, PASSWORD))
    async with running(cdn), running(origin):
        endpoints: Any = [{"url": cdn.url, "credentials": True}, origin.url]
        async with start_daemon({"fake.test": endpoints}, credentials_file=creds) as d:
            status, _ = await _get(http, blob_url(d, digest))
    assert status == 200
    assert basic(USER, PASSWORD) in cdn.auth_seen
    assert origin.count("GET", "/blobs/") == 0, "the CDN answered; the origin was not needed"


async def test_the_token_service_named_by_a_cdn_gets_no_credentials(
    start_daemon: StartDaemon, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    """A CDN endpoint's challenge names a token service: credentials go to a token service
    only when the challenge came from an endpoint that may have them."""
    cdn_tokens = TokenService(users={USER: PASSWORD})
    async with running_service(cdn_tokens):
        cdn, origin, digest = await _two_endpoint_registry(cdn_tokens, None)
        creds = _credentials(tmp_path, basic_entry(USER, PASSWORD))
        async with (
            running(cdn),
            running(origin),
            start_daemon({"fake.test": [cdn.url, origin.url]}, credentials_file=creds) as d,
        ):
            status, _ = await _get(http, blob_url(d, digest))
    sent = [r.authorization for r in cdn_tokens.requests]
    assert basic(USER, PASSWORD) not in sent, "the CDN's token service got the credentials"
    assert status == 200
