"""Upstream failures in the README's troubleshooting words, never a Python class name: what a
client of the mirror reads in the 502 and what the access line's ``error`` says."""

from __future__ import annotations

import re
import socket
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.abc import AbstractResolver, ResolveResult

from cachesvc.upstream.egress import connection_failure
from tests.conftest import daemon_for, make_config
from tests.fakes.registry import FakeRegistry
from tests.peers.ports import refused_url
from tests.tls_upstream import https, plain, server_context

CLASS_NAME = re.compile(r"\bClient\w*Error\b|\b\w+Error\b")


async def _manifest_error(http: aiohttp.ClientSession, storage: Path, endpoint: str) -> str:
    """The message of the mirror's answer to a manifest GET when upstream is ``endpoint``."""
    config = make_config(storage, {"up.test": [endpoint]})
    async with daemon_for(config) as daemon:
        url = f"{daemon.mirror_url}/v2/team/app/manifests/1?ns=up.test"
        async with http.get(url) as resp:
            assert resp.status == 502, await resp.text()
            body = await resp.json()
    message = str(body["errors"][0]["message"])
    assert not CLASS_NAME.search(message), message
    return message


async def test_connection_refused(http: aiohttp.ClientSession, storage: Path) -> None:
    url = refused_url()
    message = await _manifest_error(http, storage, url)
    port = url.rsplit(":", 1)[1]
    assert message == f"up.test unreachable at {url}: connection refused by 127.0.0.1:{port}"


async def test_tls_certificate_not_trusted(
    http: aiohttp.ClientSession, storage: Path, pki: dict[str, Any]
) -> None:
    async with https(FakeRegistry(), server_context(pki, mutual=False)) as url:
        message = await _manifest_error(http, storage, url)
    assert re.fullmatch(rf"up\.test unreachable at {re.escape(url)}: TLS handshake failed: "
                        r"the certificate of 127\.0\.0\.1 is not trusted \(.*certificate.*\)",
                        message), message  # fmt: skip


async def test_tls_to_a_plain_http_server(http: aiohttp.ClientSession, storage: Path) -> None:
    async with plain(FakeRegistry()) as url:
        endpoint = url.replace("http://", "https://")
        message = await _manifest_error(http, storage, endpoint)
    assert message.startswith(f"up.test unreachable at {endpoint}: TLS handshake failed: ")
    assert "wrong version number" in message, message


class _NoSuchName(AbstractResolver):
    """A resolver that knows no name, as a DNS server answering NXDOMAIN would."""

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        raise OSError(socket.EAI_NONAME, "Name or service not known")

    async def close(self) -> None:
        return None


async def test_a_name_that_does_not_resolve() -> None:
    # aiohttp raises ClientConnectorDNSError itself here (no network needed); its words:
    connector = aiohttp.TCPConnector(resolver=_NoSuchName())
    async with aiohttp.ClientSession(connector=connector) as session:
        with pytest.raises(aiohttp.ClientConnectorDNSError) as caught:
            await session.get("http://registry.corp.test/v2/")
    assert connection_failure(caught.value) == "name registry.corp.test did not resolve"
