"""Bearer token flows against a fake token service: anonymous, credentialed, identity token,
caching per scope, expiry, re-challenge, rotation."""

from __future__ import annotations

import os
from pathlib import Path

import aiohttp

from cachesvc.app import Daemon
from tests.clock import AdvancingClock
from tests.conftest import StartDaemon, blob_url
from tests.fakes.auth import TokenService, basic
from tests.fakes.registry import FakeRegistry
from tests.upstream_helpers import basic_entry, docker_config, editor_replace, metrics, sample

AUTH_FAILURES = "cachesvc_upstream_auth_failures_total"


async def get_blob(
    http: aiohttp.ClientSession, daemon: Daemon, digest: str, repo: str = "team/app"
) -> int:
    async with http.get(blob_url(daemon, digest, repo)) as resp:
        await resp.read()
        return resp.status


def robot_behind_tokens(
    fake: FakeRegistry, tokens: TokenService, tmp_path: Path, password: str
) -> Path:
    """The fake registry behind a token service that knows only user ``robot``; returns a
    credentials file holding that user's password."""
    tokens.anonymous = False
    tokens.users = {"robot": password}
    fake.gate = tokens
    path = tmp_path / "config.json"
    path.write_bytes(docker_config({"fake.test": basic_entry("robot", password)}))
    return path


async def test_anonymous_tokens_are_cached_per_scope(
    fake: FakeRegistry, tokens: TokenService, mirror: Daemon, http: aiohttp.ClientSession
) -> None:
    fake.gate = tokens
    blobs = [fake.add_blob(os.urandom(100)) for _ in range(4)]
    for digest in blobs[:3]:
        assert await get_blob(http, mirror, digest) == 200
    assert len(tokens.requests) == 1
    assert tokens.requests[0].scope == "repository:team/app:pull"
    assert tokens.requests[0].authorization is None
    assert await get_blob(http, mirror, blobs[3], repo="team/other") == 200
    assert [r.scope for r in tokens.requests] == [
        "repository:team/app:pull",
        "repository:team/other:pull",
    ]


async def test_credentials_go_to_the_token_service_never_to_the_registry(
    fake: FakeRegistry,
    tokens: TokenService,
    start_daemon: StartDaemon,
    http: aiohttp.ClientSession,
    tmp_path: Path,
) -> None:
    path = robot_behind_tokens(fake, tokens, tmp_path, "robot-pw")
    digest = fake.add_blob(b"private")
    async with start_daemon({"fake.test": [fake.url]}, credentials_file=str(path)) as daemon:
        assert await get_blob(http, daemon, digest) == 200
    assert [r.authorization for r in tokens.requests] == [basic("robot", "robot-pw")]
    assert any(a is not None for a in fake.auth_seen)  # not vacuous: a token was presented
    assert all(a is None or a.startswith("Bearer ") for a in fake.auth_seen)


async def test_identity_token_is_posted_as_a_refresh_token(
    fake: FakeRegistry,
    tokens: TokenService,
    start_daemon: StartDaemon,
    http: aiohttp.ClientSession,
    tmp_path: Path,
) -> None:
    tokens.anonymous = False
    tokens.refresh_tokens = {"refresh-1"}
    fake.gate = tokens
    path = tmp_path / "config.json"
    path.write_bytes(docker_config({"fake.test": {"identitytoken": "refresh-1"}}))
    digest = fake.add_blob(b"via oauth")
    async with start_daemon({"fake.test": [fake.url]}, credentials_file=str(path)) as daemon:
        assert await get_blob(http, daemon, digest) == 200
    (request,) = tokens.requests
    assert (request.method, request.grant_type) == ("POST", "refresh_token")
    assert request.scope == "repository:team/app:pull"


async def test_an_expired_token_is_fetched_again(
    fake: FakeRegistry,
    tokens: TokenService,
    mirror: Daemon,
    http: aiohttp.ClientSession,
    clock: AdvancingClock,
) -> None:
    tokens.expires_in = 1
    fake.gate = tokens
    first, second = fake.add_blob(b"one"), fake.add_blob(b"two")
    assert await get_blob(http, mirror, first) == 200
    clock.advance(1.2)
    assert await get_blob(http, mirror, second) == 200
    assert len(tokens.requests) == 2
    # cachesvc did not knowingly send the expired token: the registry saw no extra 401.
    assert fake.count("GET", "/blobs/") == 4  # each blob: a 401 challenge, then the GET


async def test_a_revoked_token_is_rechallenged_once(
    fake: FakeRegistry, tokens: TokenService, mirror: Daemon, http: aiohttp.ClientSession
) -> None:
    fake.gate = tokens
    first, second = fake.add_blob(b"one"), fake.add_blob(b"two")
    assert await get_blob(http, mirror, first) == 200
    tokens.revoke_all()  # the cached token is refused from now on
    assert await get_blob(http, mirror, second) == 200
    assert len(tokens.requests) == 2


async def test_a_token_service_that_keeps_refusing_is_a_clear_401(
    fake: FakeRegistry, tokens: TokenService, mirror: Daemon, http: aiohttp.ClientSession
) -> None:
    tokens.anonymous = False
    fake.gate = tokens
    digest = fake.add_blob(b"x")
    async with http.get(blob_url(mirror, digest)) as resp:
        assert resp.status == 401
        message = (await resp.json())["errors"][0]["message"]
    assert "token service of fake.test refused the mirror" in message
    assert "no credentials for fake.test" in message


async def test_a_token_service_refusal_counts_as_an_auth_failure_from_zero(
    fake: FakeRegistry, tokens: TokenService, mirror: Daemon, http: aiohttp.ClientSession
) -> None:
    """The rotated-secret alert (CachesvcUpstreamAuthFailures) reads one counter: a refusal
    by the token service must count there, not only in the token-fetch errors, and the
    series must exist at 0 before it so increase() sees the first one."""
    before = await metrics(http, mirror)
    for code in ("401", "403"):  # present (sample() reads an absent series as 0 too)
        assert before[(AUTH_FAILURES, (("code", code), ("registry", "fake.test")))] == 0
    tokens.anonymous = False
    fake.gate = tokens
    assert await get_blob(http, mirror, fake.add_blob(b"y")) == 401
    after = await metrics(http, mirror)
    assert sample(after, AUTH_FAILURES, registry="fake.test", code="401") == 1
    assert sample(after, "cachesvc_token_fetches_total", registry="fake.test", result="error") == 1


async def test_rotated_credentials_drop_cached_tokens(
    fake: FakeRegistry,
    tokens: TokenService,
    start_daemon: StartDaemon,
    http: aiohttp.ClientSession,
    tmp_path: Path,
) -> None:
    path = robot_behind_tokens(fake, tokens, tmp_path, "old-pw")
    first, second = fake.add_blob(b"one"), fake.add_blob(b"two")
    async with start_daemon({"fake.test": [fake.url]}, credentials_file=str(path)) as daemon:
        assert await get_blob(http, daemon, first) == 200
        tokens.users = {"robot": "new-pw"}
        editor_replace(path, docker_config({"fake.test": basic_entry("robot", "new-pw")}))
        # The old token would still be accepted; cachesvc must not keep using it.
        assert await get_blob(http, daemon, second) == 200
    assert [r.authorization for r in tokens.requests] == [
        basic("robot", "old-pw"),
        basic("robot", "new-pw"),
    ]
