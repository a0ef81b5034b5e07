"""Helpers for the operator-surface tests: multi-arch images in the fake upstream,
an admin-enabled daemon, and polling prewarm jobs."""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import aiohttp

from cachesvc.app import Daemon
from tests.conftest import daemon_for, make_config
from tests.fakes.registry import OCI_MANIFEST, FakeRegistry

OCI_INDEX = "application/vnd.oci.image.index.v1+json"
TOKEN = "s3cret-admin-token-0123456789"


@dataclass
class PlatformImage:
    platform: str
    manifest: str
    blobs: list[str]  # config + layers
    sizes: list[int]


def add_index(
    fake: FakeRegistry, repo: str, tag: str, platforms: dict[str, list[int]]
) -> tuple[str, dict[str, PlatformImage]]:
    """An OCI index in the fake upstream; ``platforms`` maps ``os/arch`` to layer sizes."""
    entries, images = [], {}
    for platform, layer_sizes in platforms.items():
        os_name, arch = platform.split("/")[:2]
        config = json.dumps({"architecture": arch, "os": os_name, "p": platform}).encode()
        layers = [os.urandom(n) for n in layer_sizes]
        config_digest = fake.add_blob(config)
        layer_digests = [fake.add_blob(layer) for layer in layers]
        manifest = json.dumps(
            {
                "schemaVersion": 2,
                "mediaType": OCI_MANIFEST,
                "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                           "digest": config_digest, "size": len(config)},
                "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar",
                            "digest": d, "size": len(b)}
                           for d, b in zip(layer_digests, layers, strict=True)],
            }
        ).encode()  # fmt: skip
        digest = fake.add_manifest(repo, f"{platform.replace('/', '-')}", manifest)
        entries.append({"mediaType": OCI_MANIFEST, "digest": digest, "size": len(manifest),
                        "platform": {"os": os_name, "architecture": arch}})  # fmt: skip
        images[platform] = PlatformImage(
            platform, digest, [config_digest, *layer_digests], [len(config), *layer_sizes]
        )
    index = json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": entries}).encode()
    return fake.add_manifest(repo, tag, index, OCI_INDEX), images


def write_token(path: Path, token: str = TOKEN) -> Path:
    path.write_text(token + "\n")
    return path


@asynccontextmanager
async def admin_daemon(
    root: Path,
    fake: FakeRegistry,
    token_file: Path | None,
    max_size: int | None = None,
    **extra: Any,
) -> AsyncIterator[Daemon]:
    admin: dict[str, Any] = {"listen": "127.0.0.1:0"}
    if token_file is not None:
        admin["token_file"] = str(token_file)
    config = make_config(root, {"fake.test": [fake.url]}, admin=admin, **extra)
    config = replace(config, storage=replace(config.storage, max_size=max_size))
    async with daemon_for(config) as daemon:
        yield daemon


def admin_with_token(
    root: Path, fake: FakeRegistry, **extra: Any
) -> AbstractAsyncContextManager[Daemon]:
    """:func:`admin_daemon` with :data:`TOKEN` in a token file next to ``root``."""
    return admin_daemon(root, fake, write_token(root.parent / "admin-token"), **extra)


def auth(token: str = TOKEN) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def submit(
    http: aiohttp.ClientSession, daemon: Daemon, images: list[str], **body: Any
) -> str:
    async with http.post(
        f"{daemon.admin_url}/admin/v1/prewarm", json={"images": images, **body}, headers=auth()
    ) as resp:
        data = await resp.json()
        assert resp.status == 202, data
        return str(data["id"])


async def wait_job(
    http: aiohttp.ClientSession, daemon: Daemon, job_id: str, limit: float = 20.0
) -> dict[str, Any]:
    async with asyncio.timeout(limit):
        while True:
            async with http.get(
                f"{daemon.admin_url}/admin/v1/jobs/{job_id}", headers=auth()
            ) as resp:
                job: dict[str, Any] = await resp.json()
            if job["state"] not in ("queued", "running"):
                return job
            await asyncio.sleep(0.05)
