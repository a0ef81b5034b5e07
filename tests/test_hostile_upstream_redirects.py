"""Issue 11, hostile upstream, redirects: followed to the endpoint's own host; to another host
only when it is public, or loopback/private with ``redirect_private: true``; link-local,
unspecified and multicast never. An answer for a manifest must be a manifest."""

from __future__ import annotations

import os
from typing import Any

import aiohttp

from tests.conftest import StartDaemon, blob_url, with_settings
from tests.fakes.registry import OCI_MANIFEST, FakeRegistry
from tests.test_redirects import Cdn, serving


async def _get(http: aiohttp.ClientSession, url: str, **kw: Any) -> tuple[int, bytes]:
    async with http.get(url, **kw) as resp:
        return resp.status, await resp.read()


async def test_a_manifest_redirect_to_something_that_is_not_a_manifest_is_refused(
    fake: FakeRegistry, mirror: Any, http: aiohttp.ClientSession
) -> None:
    """The registry redirects a tag to cachesvc's own /metrics (same host, so followed): the
    answer is not a manifest and must be neither served nor cached as the tag."""
    fake.add_image("team/app", "v1", [b"layer"])
    fake.faults.manifest_redirect_location = f"{mirror.admin_url}/metrics"
    url = f"{mirror.mirror_url}/v2/team/app/manifests/v1?ns=fake.test"
    status, body = await _get(http, url, headers={"Accept": OCI_MANIFEST})
    assert b"# HELP" not in body, "cachesvc's /metrics was served as a manifest"
    assert status == 502, body[:300]
    fake.faults.manifest_redirect_location = None
    status, body = await _get(http, url, headers={"Accept": OCI_MANIFEST})
    assert status == 200
    assert b"schemaVersion" in body


async def test_a_redirect_to_another_loopback_host_needs_redirect_private(
    fake: FakeRegistry, mirror: Any, http: aiohttp.ClientSession
) -> None:
    data = os.urandom(1000)
    digest = fake.add_blob(data)
    async with serving(Cdn({digest: data})) as cdn:
        fake.faults.redirect_location = f"{cdn.url}/cdn/{digest}"
        status, body = await _get(http, blob_url(mirror, digest))
    assert cdn.seen == [], "the mirror connected to a private redirect target"
    assert status == 502, body[:300]


async def test_redirect_private_true_allows_a_loopback_cdn(
    fake: FakeRegistry, start_daemon: StartDaemon, http: aiohttp.ClientSession
) -> None:
    data = os.urandom(1000)
    digest = fake.add_blob(data)
    async with (
        serving(Cdn({digest: data})) as cdn,
        with_settings(start_daemon, fake, redirect_private=True) as daemon,
    ):
        fake.faults.redirect_location = f"{cdn.url}/cdn/{digest}"
        assert await _get(http, blob_url(daemon, digest)) == (200, data)


async def test_an_unspecified_address_is_never_a_redirect_target(
    fake: FakeRegistry, start_daemon: StartDaemon, http: aiohttp.ClientSession
) -> None:
    """0.0.0.0 (Linux connects it to the local host): refused even with redirect_private."""
    data = os.urandom(1000)
    digest = fake.add_blob(data)
    async with (
        serving(Cdn({digest: data})) as cdn,
        with_settings(start_daemon, fake, redirect_private=True) as daemon,
    ):
        port = cdn.url.rsplit(":", 1)[1]
        fake.faults.redirect_location = f"http://0.0.0.0:{port}/cdn/{digest}"
        status, body = await _get(http, blob_url(daemon, digest))
    assert cdn.seen == [], "the mirror connected to 0.0.0.0"
    assert status == 502, body[:300]


async def test_the_cloud_metadata_address_is_never_a_redirect_target(
    fake: FakeRegistry, start_daemon: StartDaemon, http: aiohttp.ClientSession
) -> None:
    """169.254.169.254 (link-local): refused before any connection, even with
    redirect_private, and the error says why."""
    digest = fake.add_blob(os.urandom(100))
    fake.faults.redirect_location = "http://169.254.169.254/latest/meta-data/iam/"
    async with with_settings(start_daemon, fake, redirect_private=True) as daemon:
        status, body = await _get(http, blob_url(daemon, digest))
    assert status == 502, body[:300]
    assert b"169.254.169.254" in body
