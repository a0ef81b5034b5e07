"""A fake registry over TLS, and the certificates for it (``pki`` fixture in conftest)."""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import trustme
from aiohttp import web

from tests.fakes.registry import FakeRegistry, running


@asynccontextmanager
async def https(registry: FakeRegistry, context: ssl.SSLContext) -> AsyncIterator[str]:
    runner = web.AppRunner(registry.app(), access_log=None, shutdown_timeout=0.5)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=context)
    await site.start()
    registry.url = f"https://127.0.0.1:{runner.addresses[0][1]}"
    try:
        yield registry.url
    finally:
        await runner.cleanup()


def make_pki(tmp_path: Path) -> dict[str, Any]:
    """A CA, a server certificate for 127.0.0.1 and a client certificate, as files."""
    ca = trustme.CA()
    server = ca.issue_cert("127.0.0.1")
    client = ca.issue_cert("cachesvc.node.test")
    files = {
        "ca_file": tmp_path / "ca.pem",
        "cert": tmp_path / "client.pem",
        "key": tmp_path / "client.key",
    }
    ca.cert_pem.write_to_path(str(files["ca_file"]))
    client.cert_chain_pems[0].write_to_path(str(files["cert"]))
    client.private_key_pem.write_to_path(str(files["key"]))
    return {"ca": ca, "server": server, **files}


def server_context(pki: dict[str, Any], *, mutual: bool) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    pki["server"].configure_cert(context)
    if mutual:
        pki["ca"].configure_trust(context)
        context.verify_mode = ssl.CERT_REQUIRED
    return context


@asynccontextmanager
async def plain(registry: FakeRegistry) -> AsyncIterator[str]:
    """Serve ``registry`` over plain http (like ``https``: yields its URL)."""
    async with running(registry) as served:
        yield served.url
