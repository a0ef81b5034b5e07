"""Upstream credentials: the dockerconfigjson file, Basic auth, rotation, and no leaks."""

from __future__ import annotations

import base64
import logging
import os
from collections.abc import Callable
from pathlib import Path

import aiohttp
import pytest

from cachesvc.app import Daemon
from cachesvc.errors import CredentialsFileError
from cachesvc.upstream.credentials import Credential, parse_docker_config
from tests.conftest import StartDaemon, blob_url
from tests.fakes.auth import BasicGate, TokenService, running_service
from tests.fakes.registry import FakeRegistry, running
from tests.upstream_helpers import (
    KubeletSecretDir,
    basic_entry,
    docker_config,
    editor_replace,
    metric,
    metrics_text,
    overwrite,
)


def test_docker_config_forms_are_parsed_and_matched_by_registry() -> None:
    parsed = parse_docker_config(
        docker_config(
            {
                "https://index.docker.io/v1/": basic_entry("hub", "hub-pw"),
                "ccr.volces.com": {"username": "robot", "password": "r-pw"},
                "https://ghcr.io/v2/": {"identitytoken": "refresh-me"},
            }
        )
    )
    assert parsed["docker.io"] == Credential("hub", "hub-pw")
    assert parsed["ccr.volces.com"] == Credential("robot", "r-pw")
    assert parsed["ghcr.io"].identity_token == "refresh-me"
    assert "r-pw" not in repr(parsed["ccr.volces.com"])
    assert "refresh-me" not in repr(parsed["ghcr.io"])
    for bad in (b'{"auths": {"x.io": {"auth": "bm9jb2xvbg=="}}}', b'{"auths": {', b"[]"):
        with pytest.raises(CredentialsFileError):
            parse_docker_config(bad)


async def pulls_from(
    http: aiohttp.ClientSession, daemon: Daemon, fake: FakeRegistry, digest: str
) -> None:
    """A GET of the blob through the mirror is a 200 with the upstream's bytes."""
    async with http.get(blob_url(daemon, digest)) as resp:
        assert resp.status == 200
        assert await resp.read() == fake.blobs[digest]


async def test_basic_challenge_is_answered_from_the_credentials_file(
    fake: FakeRegistry, start_daemon: StartDaemon, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    gate = fake.gate = BasicGate("alice", "first-secret")
    creds = tmp_path / "config.json"
    creds.write_bytes(docker_config({"fake.test": basic_entry("alice", "first-secret")}))
    digests = [fake.add_blob(os.urandom(1000)) for _ in range(3)]
    async with start_daemon({"fake.test": [fake.url]}, credentials_file=str(creds)) as daemon:
        for digest in digests:
            await pulls_from(http, daemon, fake, digest)
    # One 401 taught cachesvc that the endpoint wants Basic; later requests send it up front.
    assert gate.refused == 1


async def _rotate_and_pull(
    fake: FakeRegistry,
    start_daemon: StartDaemon,
    http: aiohttp.ClientSession,
    path: Path,
    rotate: Callable[[bytes], None],
) -> None:
    gate = fake.gate = BasicGate("alice", "first-secret")
    first, second = fake.add_blob(os.urandom(500)), fake.add_blob(os.urandom(500))
    async with start_daemon({"fake.test": [fake.url]}, credentials_file=str(path)) as daemon:
        await pulls_from(http, daemon, fake, first)
        gate.password = "second-secret"  # the registry's password changed
        rotate(docker_config({"fake.test": basic_entry("alice", "second-secret")}))
        await pulls_from(http, daemon, fake, second)  # the next cold pull


@pytest.mark.parametrize("style", ["editor_rename", "overwrite_in_place"])
async def test_rotation_of_a_plain_file_needs_no_restart(
    style: str,
    fake: FakeRegistry,
    start_daemon: StartDaemon,
    http: aiohttp.ClientSession,
    tmp_path: Path,
) -> None:
    path = tmp_path / "config.json"
    path.write_bytes(docker_config({"fake.test": basic_entry("alice", "first-secret")}))

    def rotate(content: bytes) -> None:
        (editor_replace if style == "editor_rename" else overwrite)(path, content)

    await _rotate_and_pull(fake, start_daemon, http, path, rotate)


async def test_rotation_by_kubelet_symlink_swap_needs_no_restart(
    fake: FakeRegistry, start_daemon: StartDaemon, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    secret = KubeletSecretDir(
        tmp_path / "secret", docker_config({"fake.test": basic_entry("alice", "first-secret")})
    )
    await _rotate_and_pull(fake, start_daemon, http, secret.path, secret.update)
    assert secret.generation == 2


async def test_a_bad_file_keeps_the_last_good_credentials_and_logs_one_error(
    fake: FakeRegistry,
    start_daemon: StartDaemon,
    http: aiohttp.ClientSession,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    fake.gate = BasicGate("alice", "first-secret")
    path = tmp_path / "config.json"
    path.write_bytes(docker_config({"fake.test": basic_entry("alice", "first-secret")}))
    digests = [fake.add_blob(os.urandom(300)) for _ in range(4)]
    async with start_daemon({"fake.test": [fake.url]}, credentials_file=str(path)) as daemon:
        caplog.set_level(logging.INFO, logger="cachesvc.credentials")
        editor_replace(path, b'{"auths": {"fake.test": {"auth": "YWxp')  # half-written
        for digest in digests[:3]:
            await pulls_from(http, daemon, fake, digest)  # still the last good credentials
        errors = [
            r
            for r in caplog.records
            if r.levelno == logging.ERROR and r.name == "cachesvc.credentials"
        ]
        assert len(errors) == 1, [r.getMessage() for r in errors]
        assert str(path) in errors[0].getMessage()
        assert "keeping the last good credentials" in errors[0].getMessage()
        assert await metric(http, daemon, "cachesvc_credentials_reloads_total", result="error") == 1
        # The file is completed: the new version is used.
        fake.gate = BasicGate("alice", "third-secret")
        editor_replace(path, docker_config({"fake.test": basic_entry("alice", "third-secret")}))
        await pulls_from(http, daemon, fake, digests[3])


async def test_refusals_name_the_registry_and_the_mirrors_credentials_with_a_metric(
    fake: FakeRegistry, start_daemon: StartDaemon, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    fake.gate = BasicGate("alice", "right")
    path = tmp_path / "config.json"
    path.write_bytes(docker_config({"other.registry": basic_entry("alice", "right")}))
    digest = fake.add_blob(b"x" * 10)
    async with start_daemon({"fake.test": [fake.url]}, credentials_file=str(path)) as daemon:
        async with http.get(blob_url(daemon, digest)) as resp:
            assert resp.status == 401
            error = (await resp.json())["errors"][0]
        assert error["code"] == "UNAUTHORIZED"
        assert "fake.test" in error["message"]
        assert "no credentials for fake.test" in error["message"]
        failures = {"registry": "fake.test", "code": "401"}
        # No credentials for a Basic challenge: an auth failure too (the alert's counter).
        assert await metric(http, daemon, "cachesvc_upstream_auth_failures_total", **failures) == 1

        overwrite(path, docker_config({"fake.test": basic_entry("alice", "wrong")}))
        async with http.get(blob_url(daemon, digest)) as resp:
            assert resp.status == 401
            error = (await resp.json())["errors"][0]
        assert "fake.test refused the mirror's credentials" in error["message"]
        assert "expired" in error["message"]
        assert await metric(http, daemon, "cachesvc_upstream_auth_failures_total", **failures) == 2

        fake.gate = None
        fake.faults.status = 403
        async with http.get(blob_url(daemon, digest)) as resp:
            assert resp.status == 403
            error = (await resp.json())["errors"][0]
        assert error["code"] == "DENIED"
        assert "fake.test denied the mirror" in error["message"]


async def test_secrets_never_reach_logs_metrics_or_responses(
    fake: FakeRegistry,
    start_daemon: StartDaemon,
    http: aiohttp.ClientSession,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Basic password, identity token, and issued Bearer tokens, in every failure mode."""
    caplog.set_level(logging.DEBUG)
    password, identity = "pa55-w0rd-SECRET", "identity-token-SECRET"
    secrets = [password, identity, base64.b64encode(f"alice:{password}".encode()).decode()]
    bodies: list[str] = []
    fake.gate = BasicGate("alice", password)
    # A blob per round: a cached one would be a 200 that never asks the registry.
    blobs = {tag: fake.add_blob(tag.encode() * 100) for tag in ("v1", "v2", "v3")}
    path = tmp_path / "config.json"
    path.write_bytes(
        docker_config(
            {
                "fake.test": basic_entry("alice", password),
                "tok.test": basic_entry("alice", password),
            }
        )
    )
    async with (
        running_service(TokenService(users={"alice": password})) as tokens,
        running(FakeRegistry(gate=tokens)) as second,
        start_daemon(
            {"fake.test": [fake.url], "tok.test": [second.url]}, credentials_file=str(path)
        ) as daemon,
    ):
        second.add_image("team/app", "v1", [b"layer"])

        async def record_answers(tag: str) -> None:
            manifest = f"{daemon.mirror_url}/v2/team/app/manifests/{tag}?ns=tok.test"
            for url in (blob_url(daemon, blobs[tag]), manifest):
                async with http.get(url) as resp:
                    bodies.append(f"{resp.status} {dict(resp.headers)} {await resp.text()}")

        await record_answers("v1")  # success
        fake.gate = BasicGate("alice", "changed")
        tokens.users = {"alice": "changed"}
        tokens.revoke_all()
        overwrite(path, b'{"auths": {"fake.test": {"auth": "' + secrets[2].encode())
        await record_answers("v2")  # refused, half-written file
        overwrite(path, docker_config({"tok.test": {"identitytoken": identity}}))
        await record_answers("v3")  # identity token refused
        exposition = await metrics_text(http, daemon)
    issued = tokens.issued_tokens
    assert issued
    assert [b[:3] for b in bodies] == ["200", "200", "401", "401", "401", "401"], bodies
    logs = "\n".join(
        f"{r.getMessage()} {getattr(r, 'fields', '')} {r.exc_text or ''}" for r in caplog.records
    )
    for secret in [*secrets, *issued]:
        assert secret not in logs
        assert secret not in exposition
        for body in bodies:
            assert secret not in body
