"""Inputs found by review to break things: each must end in a clear answer, not a hang,
a 500 or a traceback."""

from __future__ import annotations

import asyncio
import json
import logging
import os
from pathlib import Path

import aiohttp
import pytest
from prometheus_client import CollectorRegistry

from cachesvc.metrics import Metrics
from cachesvc.upstream.credentials import Credentials, parse_docker_config
from tests.fakes.registry import OCI_MANIFEST, FakeRegistry
from tests.operator import OCI_INDEX, admin_with_token, auth, submit, wait_job


async def raw(address: tuple[str, int], *parts: bytes) -> bytes:
    reader, writer = await asyncio.open_connection(*address)
    for part in parts:
        writer.write(part)
        await writer.drain()
        await asyncio.sleep(0.05)  # separate TCP segments
    answer = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    return answer


async def test_an_unusable_token_from_upstream_fails_the_fill_instead_of_hanging(
    fake: FakeRegistry, storage: Path, http: aiohttp.ClientSession
) -> None:
    fake.require_token = True
    fake.token_value = "tok-1\r\nX-Injected: yes"  # aiohttp refuses it as a header value
    digest = fake.add_blob(b"payload")
    async with admin_with_token(storage, fake) as daemon:
        url = f"{daemon.mirror_url}/v2/team/app/blobs/{digest}?ns=fake.test"
        async with asyncio.timeout(10), http.get(url) as resp:
            assert resp.status == 502
            assert "cannot be used" in (await resp.json())["errors"][0]["message"]


async def test_an_index_entry_without_digest_fails_the_prewarm_job(
    fake: FakeRegistry, storage: Path, http: aiohttp.ClientSession
) -> None:
    index = json.dumps(
        {"schemaVersion": 2, "mediaType": OCI_INDEX,
         "manifests": [{"mediaType": OCI_MANIFEST, "size": 10,
                        "platform": {"os": "linux", "architecture": "amd64"}}]}
    ).encode()  # fmt: skip
    fake.add_manifest("team/app", "broken", index, OCI_INDEX)
    async with admin_with_token(storage, fake) as daemon:
        job_id = await submit(
            http, daemon, ["fake.test/team/app:broken"], platforms=["linux/amd64"]
        )
        job = await wait_job(http, daemon, job_id)
    assert job["state"] == "failed"
    assert "no digest" in job["images"][0]["reason"]


async def test_admin_bodies_arriving_in_pieces_and_hostile_bodies(
    fake: FakeRegistry, storage: Path, caplog: pytest.LogCaptureFixture
) -> None:
    fake.add_image("team/app", "v1", [b"x"])
    async with admin_with_token(storage, fake) as daemon:
        assert daemon.admin_address is not None
        body = json.dumps({"images": ["fake.test/team/app:v1"]}).encode()
        head = (
            f"POST /admin/v1/prewarm HTTP/1.1\r\nHost: x\r\n{_auth_line()}"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
            "Connection: close\r\n\r\n"
        ).encode()
        answer = await raw(daemon.admin_address, head, body[:10], body[10:])
        assert answer.startswith(b"HTTP/1.1 202"), answer[:200]
        deep = b'{"images":' + b"[" * 100_000 + b"]" * 100_000 + b"}"
        with caplog.at_level(logging.INFO):
            head = (
                f"POST /admin/v1/prewarm HTTP/1.1\r\nHost: x\r\n{_auth_line()}"
                f"Content-Length: {len(deep)}\r\nConnection: close\r\n\r\n"
            ).encode()
            answer = await raw(daemon.admin_address, head + deep)
            assert answer.startswith(b"HTTP/1.1 400"), answer[:200]
            bad_auth = b"GET /admin/v1/jobs HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer \xff\xfe\r\nConnection: close\r\n\r\n"
            answer = await raw(daemon.admin_address, bad_auth)
            assert answer.startswith(b"HTTP/1.1 401"), answer[:200]
        assert not [r for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR]


def _auth_line() -> str:
    return f"Authorization: {auth()['Authorization']}\r\n"


def test_a_fifo_in_place_of_the_credentials_file_does_not_block(tmp_path: Path) -> None:
    path = tmp_path / "config.json"
    os.mkfifo(path)
    credentials = Credentials(path, Metrics(CollectorRegistry()))
    assert credentials.lookup("docker.io") is None  # returned at once; nothing read


def test_credential_helper_entries_are_skipped_not_fatal() -> None:
    parsed = parse_docker_config(
        json.dumps(
            {"auths": {"ghcr.io": {}, "ccr.volces.com": {"auth": "dTpw"}}, "credsStore": "desktop"}
        ).encode()
    )
    assert set(parsed) == {"ccr.volces.com"}
    assert parsed["ccr.volces.com"].username == "u"
