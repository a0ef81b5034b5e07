"""Deterministic OCI images built without network, pushed and inspected with skopeo.

An image is an OCI image layout directory (``oci-layout``, ``index.json``, ``blobs/sha256/``)
that can hold several tags. Layers are tar archives (gzip or plain) holding one file of seeded
pseudo-random bytes; they are written streaming, so a layer of hundreds of MiB never sits in
memory. The same specs always give the same digests (gzip header without name or mtime, tar
entries with fixed owner and mtime).

Layout of one tag::

    single platform:  index.json ─ref.name=TAG─▶ manifest ─▶ config, layers
    multi-arch:       index.json ─ref.name=TAG─▶ image index ─▶ manifest (linux/amd64) ─▶ ...
                                                             └▶ manifest (linux/arm64) ─▶ ...
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import random
import subprocess
import tarfile
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from .registry import BasicAuth

__all__ = [
    "AMD64",
    "ARM64",
    "OCI_CONFIG",
    "OCI_INDEX",
    "OCI_LAYER_GZIP",
    "OCI_LAYER_TAR",
    "OCI_MANIFEST",
    "SKOPEO_BINARY",
    "Descriptor",
    "LayerSpec",
    "OCIImage",
    "Platform",
    "PlatformImage",
    "SkopeoError",
    "build_image",
    "build_index",
    "push",
    "skopeo_inspect",
    "skopeo_inspect_raw",
    "write_layer",
]

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
OCI_LAYER_TAR = "application/vnd.oci.image.layer.v1.tar"
REF_NAME = "org.opencontainers.image.ref.name"
SKOPEO_BINARY = "/usr/bin/skopeo"

_CHUNK = 1 << 20


@dataclass(frozen=True, slots=True)
class Platform:
    """An OCI platform (``os``/``architecture``[/``variant``])."""

    os: str = "linux"
    architecture: str = "amd64"
    variant: str | None = None

    def __str__(self) -> str:
        base = f"{self.os}/{self.architecture}"
        return base if self.variant is None else f"{base}/{self.variant}"

    def to_json(self) -> dict[str, str]:
        """The ``platform`` object of an index entry."""
        out = {"architecture": self.architecture, "os": self.os}
        if self.variant is not None:
            out["variant"] = self.variant
        return out


AMD64 = Platform("linux", "amd64")
ARM64 = Platform("linux", "arm64", "v8")


@dataclass(frozen=True, slots=True)
class Descriptor:
    """An OCI content descriptor."""

    media_type: str
    digest: str
    size: int
    platform: Platform | None = None
    annotations: Mapping[str, str] = field(default_factory=dict)

    def to_json(self) -> dict[str, object]:
        """The descriptor as it appears in a manifest or index."""
        out: dict[str, object] = {
            "mediaType": self.media_type,
            "digest": self.digest,
            "size": self.size,
        }
        if self.platform is not None:
            out["platform"] = self.platform.to_json()
        if self.annotations:
            out["annotations"] = dict(self.annotations)
        return out


@dataclass(frozen=True, slots=True)
class LayerSpec:
    """One layer: a tar holding one file of ``size`` pseudo-random bytes from ``seed``.

    ``gzip_level`` defaults to 0 (stored deflate blocks): a valid gzip stream written at
    disk speed; random bytes do not compress anyway, and level 1 runs at ~40 MiB/s.
    """

    size: int
    seed: int = 0
    compression: Literal["gzip", "none"] = "gzip"
    gzip_level: int = 0
    filename: str | None = None
    """Name of the file in the tar; ``layer-<seed>.bin`` when None."""

    @property
    def media_type(self) -> str:
        """The OCI layer media type for this compression."""
        return OCI_LAYER_GZIP if self.compression == "gzip" else OCI_LAYER_TAR


@dataclass(frozen=True, slots=True)
class PlatformImage:
    """One platform's manifest with its config and layers."""

    platform: Platform
    manifest: Descriptor
    config: Descriptor
    layers: tuple[Descriptor, ...]
    diff_ids: tuple[str, ...]

    @property
    def manifest_digest(self) -> str:
        """Digest of the image manifest."""
        return self.manifest.digest

    @property
    def config_digest(self) -> str:
        """Digest of the config blob."""
        return self.config.digest

    @property
    def layer_digests(self) -> tuple[str, ...]:
        """Digests of the layer blobs, in manifest order."""
        return tuple(layer.digest for layer in self.layers)


@dataclass(frozen=True, slots=True)
class OCIImage:
    """What was written for one tag of an OCI layout."""

    layout: Path
    tag: str
    platforms: tuple[PlatformImage, ...]
    index: Descriptor | None
    """The image index when multi-arch, else None."""

    @property
    def digest(self) -> str:
        """The digest the tag resolves to: the index when there is one, else the manifest."""
        return self.index.digest if self.index is not None else self.platforms[0].manifest.digest

    @property
    def media_type(self) -> str:
        """Media type of what the tag resolves to."""
        return OCI_INDEX if self.index is not None else OCI_MANIFEST

    @property
    def index_digest(self) -> str | None:
        """Digest of the image index, or None for a single-platform image."""
        return None if self.index is None else self.index.digest

    @property
    def single(self) -> PlatformImage:
        """The only platform image; ValueError for a multi-arch image."""
        if len(self.platforms) != 1:
            raise ValueError(f"{self.tag} has {len(self.platforms)} platforms")
        return self.platforms[0]

    @property
    def manifest_digest(self) -> str:
        """Digest of the single-platform manifest (ValueError for multi-arch)."""
        return self.single.manifest.digest

    @property
    def config_digest(self) -> str:
        """Digest of the single-platform config (ValueError for multi-arch)."""
        return self.single.config.digest

    @property
    def layers(self) -> tuple[Descriptor, ...]:
        """Layers of every platform, in order."""
        return tuple(layer for p in self.platforms for layer in p.layers)

    def for_platform(self, platform: Platform | str) -> PlatformImage:
        """The platform image for ``platform`` (``linux/arm64`` or a Platform); KeyError if absent.

        A string without variant matches any variant.
        """
        for p in self.platforms:
            if p.platform == platform or str(p.platform) == platform:
                return p
            short = f"{p.platform.os}/{p.platform.architecture}"
            if isinstance(platform, str) and short == platform:
                return p
        raise KeyError(f"{self.tag} has no platform {platform}")

    def blobs(self) -> list[Descriptor]:
        """Every blob of this tag (index, manifests, configs, layers), without duplicates."""
        seen: dict[str, Descriptor] = {}
        if self.index is not None:
            seen[self.index.digest] = self.index
        for p in self.platforms:
            for d in (p.manifest, p.config, *p.layers):
                seen.setdefault(d.digest, d)
        return list(seen.values())

    def blob_path(self, digest: str) -> Path:
        """Path of a blob inside the layout."""
        return _blob_path(self.layout, digest)


# -- writing -------------------------------------------------------------------------------


class _HashingSink:
    """A write-only stream that hashes and counts bytes, then hands them on."""

    def __init__(self, downstream: Callable[[bytes], object]) -> None:
        self._downstream = downstream
        self._hash = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes) -> int:
        self._hash.update(data)
        self._downstream(data)
        self.size += len(data)
        return len(data)

    def tell(self) -> int:
        return self.size

    def flush(self) -> None:
        """Nothing is buffered here."""

    @property
    def digest(self) -> str:
        return "sha256:" + self._hash.hexdigest()


class _PseudoRandomReader:
    """``size`` bytes from ``random.Random(seed)``, read in chunks."""

    def __init__(self, size: int, seed: int) -> None:
        self._left = size
        self._rng = random.Random(seed)

    def read(self, n: int = -1) -> bytes:
        if n < 0 or n > self._left:
            n = self._left
        self._left -= n
        return self._rng.randbytes(n)


def _blob_path(layout: Path, digest: str) -> Path:
    algorithm, _, hexdigest = digest.partition(":")
    return layout / "blobs" / algorithm / hexdigest


def _init_layout(layout: Path) -> Path:
    blobs = layout / "blobs" / "sha256"
    blobs.mkdir(parents=True, exist_ok=True)
    oci_layout = layout / "oci-layout"
    if not oci_layout.exists():
        oci_layout.write_text(json.dumps({"imageLayoutVersion": "1.0.0"}))
    return blobs


def _write_json_blob(layout: Path, obj: object, media_type: str) -> Descriptor:
    data = json.dumps(obj, separators=(",", ":")).encode()
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    path = _blob_path(layout, digest)
    if not path.exists():
        path.write_bytes(data)
    return Descriptor(media_type, digest, len(data))


def write_layer(layout: Path, spec: LayerSpec) -> tuple[Descriptor, str]:
    """Write one layer blob into ``layout``; return its descriptor and its diff_id.

    Streams in 1 MiB chunks: memory use does not depend on ``spec.size``.
    """
    blobs = _init_layout(layout)
    fd, tmp_name = tempfile.mkstemp(dir=blobs, prefix=".layer-")
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as out:
            blob = _HashingSink(out.write)
            if spec.compression == "gzip":
                gz = gzip.GzipFile(
                    filename="", mode="wb", fileobj=blob, mtime=0, compresslevel=spec.gzip_level
                )
                tar_sink = _HashingSink(gz.write)
            else:
                gz = None
                tar_sink = blob
            info = tarfile.TarInfo(spec.filename or f"layer-{spec.seed}.bin")
            info.size = spec.size
            info.mode = 0o644
            info.mtime = 0
            info.uid = info.gid = 0
            info.uname = info.gname = "root"
            # Not stream mode ("w|"): its 10 KiB record buffer re-slices every large write.
            with tarfile.TarFile(
                fileobj=tar_sink,  # type: ignore[arg-type]  # write/tell is all TarFile uses
                mode="w",
                format=tarfile.GNU_FORMAT,
                copybufsize=_CHUNK,
            ) as tar:
                tar.addfile(info, _PseudoRandomReader(spec.size, spec.seed))
            if gz is not None:
                gz.close()
            diff_id = tar_sink.digest
        digest = blob.digest
        tmp.rename(_blob_path(layout, digest))
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return Descriptor(spec.media_type, digest, blob.size), diff_id


def _write_platform_image(
    layout: Path, platform: Platform, layers: Sequence[LayerSpec]
) -> PlatformImage:
    written = [write_layer(layout, spec) for spec in layers]
    descriptors = tuple(d for d, _ in written)
    diff_ids = tuple(diff for _, diff in written)
    config = {
        "created": "1970-01-01T00:00:00Z",
        "architecture": platform.architecture,
        "os": platform.os,
        **({"variant": platform.variant} if platform.variant else {}),
        "config": {},
        "rootfs": {"type": "layers", "diff_ids": list(diff_ids)},
        "history": [
            {"created": "1970-01-01T00:00:00Z", "created_by": f"cachesvc test layer {i}"}
            for i in range(len(layers))
        ],
    }
    config_desc = _write_json_blob(layout, config, OCI_CONFIG)
    manifest = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": config_desc.to_json(),
        "layers": [d.to_json() for d in descriptors],
    }
    manifest_desc = _write_json_blob(layout, manifest, OCI_MANIFEST)
    return PlatformImage(
        platform=platform,
        manifest=Descriptor(
            manifest_desc.media_type, manifest_desc.digest, manifest_desc.size, platform
        ),
        config=config_desc,
        layers=descriptors,
        diff_ids=diff_ids,
    )


def _tag(layout: Path, tag: str, target: Descriptor) -> None:
    """Point ``tag`` at ``target`` in index.json, replacing an earlier entry for the tag."""
    index_path = layout / "index.json"
    if index_path.exists():
        index = json.loads(index_path.read_text())
    else:
        index = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": []}
    entries = [m for m in index["manifests"] if m.get("annotations", {}).get(REF_NAME) != tag]
    entry = Descriptor(target.media_type, target.digest, target.size, annotations={REF_NAME: tag})
    index["manifests"] = [*entries, entry.to_json()]
    index_path.write_text(json.dumps(index, indent=2))


def build_image(
    layout: Path, tag: str, layers: Sequence[LayerSpec], *, platform: Platform = AMD64
) -> OCIImage:
    """Write a single-platform image into the OCI layout ``layout`` under ``tag``."""
    _init_layout(layout)
    image = _write_platform_image(layout, platform, layers)
    _tag(layout, tag, image.manifest)
    return OCIImage(layout=layout, tag=tag, platforms=(image,), index=None)


def build_index(
    layout: Path,
    tag: str,
    platforms: Mapping[Platform, Sequence[LayerSpec]] | None = None,
) -> OCIImage:
    """Write a multi-arch image (an OCI image index) into ``layout`` under ``tag``.

    Default: linux/amd64 and linux/arm64/v8, each with two small layers of their own.
    """
    if platforms is None:
        platforms = {
            AMD64: [LayerSpec(4096, seed=101), LayerSpec(2048, seed=102)],
            ARM64: [LayerSpec(4096, seed=201), LayerSpec(2048, seed=202)],
        }
    _init_layout(layout)
    images = tuple(_write_platform_image(layout, p, specs) for p, specs in platforms.items())
    index = {
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": [i.manifest.to_json() for i in images],
    }
    index_desc = _write_json_blob(layout, index, OCI_INDEX)
    _tag(layout, tag, index_desc)
    return OCIImage(layout=layout, tag=tag, platforms=images, index=index_desc)


# -- skopeo --------------------------------------------------------------------------------


class SkopeoError(RuntimeError):
    """skopeo failed; the message carries its command line and stderr."""


def _docker_ref(ref: str) -> str:
    return ref if ref.startswith("docker://") else f"docker://{ref}"


def _clean_env(tmp: Path) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if k.lower() not in {"http_proxy", "https_proxy", "all_proxy"}
    }
    # Isolate from the host's registries.conf (mirrors, blocked registries).
    registries_conf = tmp / "registries.conf"
    registries_conf.write_text("")
    env["CONTAINERS_REGISTRIES_CONF"] = str(registries_conf)
    return env


def _run_skopeo(argv: list[str], *, timeout: float, tmp: Path) -> bytes:
    try:
        done = subprocess.run(
            argv,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            env=_clean_env(tmp),
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise SkopeoError(f"timed out after {timeout}s: {' '.join(argv)}") from exc
    if done.returncode != 0:
        raise SkopeoError(
            f"exit {done.returncode}: {' '.join(argv)}\n{done.stderr.decode(errors='replace')}"
        )
    return done.stdout


def _auth_args(
    prefix: Literal["src", "dest", ""],
    tmp: Path,
    creds: BasicAuth | None,
    cert_dir: Path | None,
    tls_verify: bool,
) -> list[str]:
    flag = f"--{prefix}-" if prefix else "--"
    # An empty auth file: never pick up credentials stored for root on this machine.
    authfile = tmp / "auth.json"
    authfile.write_text("{}")
    args = [f"--authfile={authfile}", f"{flag}tls-verify={'true' if tls_verify else 'false'}"]
    if creds is not None:
        args.append(f"{flag}creds={creds.username}:{creds.password}")
    if cert_dir is not None:
        args.append(f"{flag}cert-dir={cert_dir}")
    return args


def _layout_target(layout: Path, tag: str) -> dict[str, object]:
    index = json.loads((layout / "index.json").read_text())
    for m in index["manifests"]:
        if m.get("annotations", {}).get(REF_NAME) == tag:
            entry: dict[str, object] = m
            return entry
    raise KeyError(f"tag {tag!r} not in {layout}/index.json")


def push(
    layout: Path | OCIImage,
    tag: str | None,
    dest: str,
    *,
    tls_verify: bool = False,
    creds: BasicAuth | None = None,
    cert_dir: Path | None = None,
    binary: str = SKOPEO_BINARY,
    timeout: float = 300.0,
) -> str:
    """Copy ``oci:LAYOUT:TAG`` to ``dest`` (``127.0.0.1:PORT/repo:tag``) with skopeo.

    ``layout`` may be an :class:`OCIImage` (its layout and tag are used when ``tag`` is None).
    An index is copied with every platform (``--multi-arch all``). Digests are preserved
    (``--preserve-digests``): the pushed tag resolves to exactly the digest in the layout,
    which is checked against skopeo's ``--digestfile`` and returned. ``cert_dir`` holds
    ``*.crt`` CA files for a TLS registry (with ``tls_verify=True``).
    """
    if isinstance(layout, OCIImage):
        tag = tag or layout.tag
        layout = layout.layout
    if tag is None:
        raise ValueError("tag is required with a layout path")
    target = _layout_target(layout, tag)
    expected = str(target["digest"])
    with tempfile.TemporaryDirectory(prefix="skopeo-") as tmp_name:
        tmp = Path(tmp_name)
        digestfile = tmp / "digest"
        argv = [
            binary,
            "--insecure-policy",
            "copy",
            "--quiet",
            "--preserve-digests",
            f"--digestfile={digestfile}",
            *_auth_args("dest", tmp, creds, cert_dir, tls_verify),
        ]
        if target.get("mediaType") == OCI_INDEX:
            argv.append("--multi-arch=all")
        argv += [f"oci:{layout}:{tag}", _docker_ref(dest)]
        _run_skopeo(argv, timeout=timeout, tmp=tmp)
        pushed = digestfile.read_text().strip()
    if pushed != expected:
        raise SkopeoError(f"pushed {dest} as {pushed}, layout has {expected}")
    return pushed


def skopeo_inspect_raw(
    ref: str,
    *,
    tls_verify: bool = False,
    creds: BasicAuth | None = None,
    cert_dir: Path | None = None,
    config: bool = False,
    binary: str = SKOPEO_BINARY,
    timeout: float = 60.0,
) -> bytes:
    """The exact bytes of the manifest (or index) ``ref`` names (``--raw``); with ``config``
    the raw config blob of the image (``--config --raw``)."""
    with tempfile.TemporaryDirectory(prefix="skopeo-") as tmp_name:
        tmp = Path(tmp_name)
        argv = [binary, "--insecure-policy", "inspect", "--raw"]
        if config:
            argv.append("--config")
        argv += [*_auth_args("", tmp, creds, cert_dir, tls_verify), _docker_ref(ref)]
        return _run_skopeo(argv, timeout=timeout, tmp=tmp)


def skopeo_inspect(
    ref: str,
    *,
    tls_verify: bool = False,
    creds: BasicAuth | None = None,
    cert_dir: Path | None = None,
    raw: bool = False,
    platform: Platform | None = None,
    binary: str = SKOPEO_BINARY,
    timeout: float = 60.0,
) -> dict[str, object]:
    """``skopeo inspect`` as a dict: skopeo's summary (``Digest``, ``Layers``, ...) by default,
    the parsed manifest/index with ``raw``. For an index, the summary describes the image for
    ``platform`` (default: this machine's)."""
    if raw:
        parsed = json.loads(
            skopeo_inspect_raw(
                ref,
                tls_verify=tls_verify,
                creds=creds,
                cert_dir=cert_dir,
                binary=binary,
                timeout=timeout,
            )
        )
    else:
        with tempfile.TemporaryDirectory(prefix="skopeo-") as tmp_name:
            tmp = Path(tmp_name)
            argv = [binary, "--insecure-policy"]
            if platform is not None:
                argv += [f"--override-os={platform.os}", f"--override-arch={platform.architecture}"]
                if platform.variant is not None:
                    argv.append(f"--override-variant={platform.variant}")
            argv += ["inspect", *_auth_args("", tmp, creds, cert_dir, tls_verify), _docker_ref(ref)]
            parsed = json.loads(_run_skopeo(argv, timeout=timeout, tmp=tmp))
    if not isinstance(parsed, dict):
        raise SkopeoError(f"skopeo inspect {ref}: not a JSON object")
    return parsed
