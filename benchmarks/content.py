"""Test content: OCI image layouts built on disk, pushed to the upstream registry.

Layers are uncompressed tars holding one file of pseudo-random bytes. Bytes come from a small
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

from benchmarks.processes import run_command

CHUNK = 1 << 20
POOL_CHUNKS = 16
TAR_BLOCK = 512
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
MANIFEST_ACCEPT = ", ".join(
    [
        OCI_MANIFEST,
        OCI_INDEX,
        "application/vnd.docker.distribution.manifest.v2+json",
        "application/vnd.docker.distribution.manifest.list.v2+json",
    ]
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
    """An image in an OCI layout directory, and where it was pushed."""

    layout: Path
    repository: str
    tag: str
    manifest: Descriptor
    layers: tuple[Descriptor, ...]


class Layout:
    """An OCI image layout directory; blobs are written once and addressed by digest."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.blobs = root / "blobs" / "sha256"
        self.blobs.mkdir(parents=True, exist_ok=True)
        (root / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
        self._pool = [os.urandom(CHUNK) for _ in range(POOL_CHUNKS)]
        self._layers_written = 0

    def layer(self, size: int) -> Descriptor:
        """Write a tar layer whose one file holds ``size`` pseudo-random bytes."""
        self._layers_written += 1
        info = tarfile.TarInfo(f"data-{os.getpid()}-{self._layers_written}-{os.urandom(8).hex()}")
        info.size = size
        info.mode = 0o644
        header = info.tobuf(format=tarfile.PAX_FORMAT)
        padding = (-size) % TAR_BLOCK
        digest = hashlib.sha256()
        tmp = self.blobs / f".tmp-{self._layers_written}"
        written = 0
        with tmp.open("wb") as out:
            for piece in (header, *self._payload(size), b"\0" * (padding + 2 * TAR_BLOCK)):
                digest.update(piece)
                out.write(piece)
                written += len(piece)
        return self._place(tmp, OCI_LAYER, digest.hexdigest(), written)

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
        """Build an image manifest with one layer per size, and tag it in the layout."""
        layers = tuple(self.layer(size) for size in layer_sizes)
        manifest = self._manifest(layers, arch)
        self._tag(tag, manifest)
        return Image(self.root, repository, tag, manifest, layers)

    def index(self, repository: str, tag: str, arches: list[str], layer_size: int) -> Image:
        """Build a multi-arch index with one small single-layer image per architecture."""
        entries: list[dict[str, object]] = []
        all_layers: list[Descriptor] = []
        for arch in arches:
            layers = (self.layer(layer_size),)
            all_layers.extend(layers)
            manifest = self._manifest(layers, arch)
            entry = manifest.as_json()
            entry["platform"] = {"architecture": arch, "os": "linux"}
            entries.append(entry)
        index = self.json_blob(
            OCI_INDEX, {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": entries}
        )
        self._tag(tag, index)
        return Image(self.root, repository, tag, index, tuple(all_layers))

    def _manifest(self, layers: tuple[Descriptor, ...], arch: str) -> Descriptor:
        config = self.json_blob(
            OCI_CONFIG,
            {
                "architecture": arch,
                "os": "linux",
                "rootfs": {"type": "layers", "diff_ids": [layer.digest for layer in layers]},
                "config": {},
            },
        )
        return self.json_blob(
            OCI_MANIFEST,
            {
                "schemaVersion": 2,
                "mediaType": OCI_MANIFEST,
                "config": config.as_json(),
                "layers": [layer.as_json() for layer in layers],
            },
        )

    def _payload(self, size: int) -> list[bytes]:
        # A list of views, not copies: chunk k is pool[k % POOL_CHUNKS], the last one cut short.
        full, rest = divmod(size, CHUNK)
        pieces = [self._pool[k % POOL_CHUNKS] for k in range(full)]
        if rest:
            pieces.append(self._pool[full % POOL_CHUNKS][:rest])
        return pieces

    def _place(self, tmp: Path, media_type: str, hexdigest: str, size: int) -> Descriptor:
        final = self.blobs / hexdigest
        tmp.replace(final)
        return Descriptor(media_type, f"sha256:{hexdigest}", size, final)

    def _tag(self, tag: str, manifest: Descriptor) -> None:
        index_path = self.root / "index.json"
        if index_path.exists():
            document = json.loads(index_path.read_text())
        else:
            document = {"schemaVersion": 2, "manifests": []}
        entry = manifest.as_json()
        entry["annotations"] = {"org.opencontainers.image.ref.name": tag}
        document["manifests"].append(entry)
        index_path.write_text(json.dumps(document))


async def push_image(image: Image, registry: str) -> None:
    """Copy ``image`` from its layout to ``registry`` (host:port, plain HTTP) with skopeo."""
    argv = [
        "skopeo",
        "copy",
        "--quiet",
        "--all",
        "--preserve-digests",
        "--dest-tls-verify=false",
        f"oci:{image.layout}:{image.tag}",
        f"docker://{registry}/{image.repository}:{image.tag}",
    ]
    code, output = await run_command(argv)
    if code != 0:
        raise PushError(f"skopeo copy failed ({code}): {output}")


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
