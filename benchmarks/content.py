"""Test content: image blobs built on disk, pushed to the upstream registry.

Layers are uncompressed tars holding one file of pseudo-random bytes, exactly as large as
asked. Manifests use the Docker schema 2 media types (what most images on Docker Hub carry):
the distribution registry 2.8 in proxy mode cannot fetch OCI manifests from its upstream
("OCI manifest found, but accept header does not support OCI manifests"), and the baseline
has to work for the comparison to mean anything. Bytes come from a small
pool of random chunks, so a 256 MiB layer costs a hash and a disk write, not 256 MiB of
``os.urandom``; every layer's tar header carries a unique name, so every layer has its own digest.
Nothing is ever held whole in memory.
"""

from __future__ import annotations

import hashlib
import json
import os
import tarfile
from dataclasses import dataclass
from pathlib import Path

import aiohttp

from cachesvc.oci import (
    MEDIA_DOCKER_LIST,
    MEDIA_DOCKER_MANIFEST,
    MEDIA_OCI_INDEX,
    MEDIA_OCI_MANIFEST,
)

CHUNK = 1 << 20
POOL_CHUNKS = 16
TAR_BLOCK = 512
TAR_OVERHEAD = 3 * TAR_BLOCK  # one ustar header block, two zero blocks at the end
LAYER = "application/vnd.docker.image.rootfs.diff.tar"
CONFIG = "application/vnd.docker.container.image.v1+json"
MANIFEST_ACCEPT = ", ".join(
    [MEDIA_DOCKER_MANIFEST, MEDIA_DOCKER_LIST, MEDIA_OCI_MANIFEST, MEDIA_OCI_INDEX]
)


class PushError(RuntimeError):
    """Content could not be pushed to the upstream registry."""


@dataclass(frozen=True, slots=True)
class Descriptor:
    """An OCI content descriptor plus where the bytes live on disk."""

    media_type: str
    digest: str
    size: int
    path: Path

    def as_json(self) -> dict[str, object]:
        """The descriptor as it appears in a manifest."""
        return {"mediaType": self.media_type, "digest": self.digest, "size": self.size}


@dataclass(frozen=True, slots=True)
class Image:
    """An image (or multi-arch index) whose blobs are on disk, and where it is pushed."""

    repository: str
    tag: str
    manifest: Descriptor
    """The top-level manifest or index, pushed by tag."""
    layers: tuple[Descriptor, ...]
    configs: tuple[Descriptor, ...]
    children: tuple[Descriptor, ...] = ()
    """For an index: the per-platform manifests, pushed by digest before the index."""


class Layout:
    """Blob files under ``<root>/blobs/sha256/<hex>``, written once and addressed by digest.

    Only the blobs: images are pushed with the distribution API (``push_image``) and nginx
    serves ``<root>/blobs``, so no ``index.json`` or ``oci-layout`` file is written.
    """

    def __init__(self, root: Path) -> None:
        self.root = root
        self.blobs = root / "blobs" / "sha256"
        self.blobs.mkdir(parents=True, exist_ok=True)
        self._pool = [os.urandom(CHUNK) for _ in range(POOL_CHUNKS)]
        self._layers_written = 0

    def layer(self, size: int) -> Descriptor:
        """Write a tar layer of exactly ``size`` bytes (a multiple of 512, at least 1536)."""
        if size % TAR_BLOCK or size < TAR_OVERHEAD:
            raise ValueError(
                f"layer size {size} is not a multiple of {TAR_BLOCK} >= {TAR_OVERHEAD}"
            )
        self._layers_written += 1
        info = tarfile.TarInfo(f"data-{self._layers_written}-{os.urandom(8).hex()}")
        info.size = size - TAR_OVERHEAD
        info.mode = 0o644
        header = info.tobuf(format=tarfile.USTAR_FORMAT)
        digest = hashlib.sha256()
        tmp = self.blobs / f".tmp-{self._layers_written}"
        written = 0
        with tmp.open("wb") as out:
            for piece in (header, *self._payload(info.size), b"\0" * (2 * TAR_BLOCK)):
                digest.update(piece)
                out.write(piece)
                written += len(piece)
        if written != size:
            raise AssertionError(f"layer is {written} bytes, wanted {size}")
        return self._place(tmp, LAYER, digest.hexdigest(), written)

    def json_blob(self, media_type: str, document: object) -> Descriptor:
        """Write a JSON document (config, manifest or index) as a blob."""
        data = json.dumps(document, separators=(",", ":"), sort_keys=True).encode()
        hexdigest = hashlib.sha256(data).hexdigest()
        tmp = self.blobs / f".tmp-json-{hexdigest}"
        tmp.write_bytes(data)
        return self._place(tmp, media_type, hexdigest, len(data))

    def image(
        self, repository: str, tag: str, layer_sizes: list[int], arch: str = "amd64"
    ) -> Image:
        """Build an image manifest with one layer per size, to be pushed as ``repository:tag``."""
        layers = tuple(self.layer(size) for size in layer_sizes)
        manifest, config = self._manifest(layers, arch)
        return Image(repository, tag, manifest, layers, (config,))

    def index(self, repository: str, tag: str, arches: list[str], layer_size: int) -> Image:
        """Build a multi-arch index with one small single-layer image per architecture."""
        entries: list[dict[str, object]] = []
        all_layers: list[Descriptor] = []
        configs: list[Descriptor] = []
        children: list[Descriptor] = []
        for arch in arches:
            layers = (self.layer(layer_size),)
            all_layers.extend(layers)
            manifest, config = self._manifest(layers, arch)
            configs.append(config)
            children.append(manifest)
            entry = manifest.as_json()
            entry["platform"] = {"architecture": arch, "os": "linux"}
            entries.append(entry)
        document = {"schemaVersion": 2, "mediaType": MEDIA_DOCKER_LIST, "manifests": entries}
        index = self.json_blob(MEDIA_DOCKER_LIST, document)
        return Image(repository, tag, index, tuple(all_layers), tuple(configs), tuple(children))

    def _manifest(self, layers: tuple[Descriptor, ...], arch: str) -> tuple[Descriptor, Descriptor]:
        config = self.json_blob(
            CONFIG,
            {
                "architecture": arch,
                "os": "linux",
                "rootfs": {"type": "layers", "diff_ids": [layer.digest for layer in layers]},
                "config": {},
            },
        )
        manifest = self.json_blob(
            MEDIA_DOCKER_MANIFEST,
            {
                "schemaVersion": 2,
                "mediaType": MEDIA_DOCKER_MANIFEST,
                "config": config.as_json(),
                "layers": [layer.as_json() for layer in layers],
            },
        )
        return manifest, config

    def _payload(self, size: int) -> list[bytes]:
        # References to the pool, not copies: chunk k is pool[k % POOL_CHUNKS]; only the short
        # last piece is a (less than 1 MiB) copy.
        full, rest = divmod(size, CHUNK)
        pieces = [self._pool[k % POOL_CHUNKS] for k in range(full)]
        if rest:
            pieces.append(self._pool[full % POOL_CHUNKS][:rest])
        return pieces

    def _place(self, tmp: Path, media_type: str, hexdigest: str, size: int) -> Descriptor:
        final = self.blobs / hexdigest
        tmp.replace(final)
        return Descriptor(media_type, f"sha256:{hexdigest}", size, final)


async def push_image(session: aiohttp.ClientSession, registry_url: str, image: Image) -> None:
    """Push ``image`` with the distribution API: blobs, then child manifests, then the tag.

    Not ``skopeo copy oci:...``: skopeo 1.9 finds only OCI media types in a layout's index,
    and these images carry Docker media types (see the module docstring).
    """
    for blob in (*image.layers, *image.configs):
        await upload_blob(session, registry_url, image.repository, blob)
    for child in image.children:
        await put_manifest(session, registry_url, image.repository, child.digest, child)
    await put_manifest(session, registry_url, image.repository, image.tag, image.manifest)


async def put_manifest(
    session: aiohttp.ClientSession,
    registry_url: str,
    repository: str,
    reference: str,
    manifest: Descriptor,
) -> None:
    """PUT a manifest's exact bytes under a tag or its digest."""
    async with session.put(
        f"{registry_url}/v2/{repository}/manifests/{reference}",
        data=manifest.path.read_bytes(),
        headers={"Content-Type": manifest.media_type},
    ) as response:
        if response.status != 201:
            text = await response.text()
            raise PushError(f"manifest {repository}:{reference}: {response.status} {text}")


async def upload_blob(
    session: aiohttp.ClientSession, registry_url: str, repository: str, blob: Descriptor
) -> None:
    """Push one blob with the distribution API (POST an upload, then PUT the bytes)."""
    async with session.post(f"{registry_url}/v2/{repository}/blobs/uploads/") as started:
        if started.status != 202:
            raise PushError(f"upload start for {blob.digest}: {started.status}")
        location = started.headers["Location"]
    if location.startswith("/"):
        location = registry_url + location
    separator = "&" if "?" in location else "?"
    with blob.path.open("rb") as body:
        async with session.put(
            f"{location}{separator}digest={blob.digest}",
            data=body,
            headers={
                "Content-Type": "application/octet-stream",
                "Content-Length": str(blob.size),
            },
        ) as finished:
            if finished.status != 201:
                raise PushError(f"upload of {blob.digest}: {finished.status}")
