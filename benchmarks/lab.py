"""The lab: every system started side by side, the test content loaded, everything torn down.

One ``Lab`` per run. ``Lab.open`` builds the images, starts the upstream registry, the
distribution proxy, cachesvc (when it runs: once on the default asyncio loop, once with
``event_loop: uvloop``, or instead of the uvloop one an older revision's cachesvc with the
same configuration when ``--before`` names one) and nginx; closing the lab stops every child
and removes the work directory, whatever happened in between.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import tempfile
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp

from benchmarks.access_log import count_requests
from benchmarks.content import Descriptor, Image, Layout, push_image, upload_blob
from benchmarks.machine import sha256_mib_per_second
from benchmarks.measurement import CACHESVC, CACHESVC_BEFORE, CACHESVC_UVLOOP, MIB
from benchmarks.processes import ChildError
from benchmarks.revision import Revision
from benchmarks.systems import (
    Service,
    cachesvc_unavailable_reason,
    start_cachesvc,
    start_nginx,
    start_registry,
)

BIG_REPOSITORY = "bench/big"
SMALL_REPOSITORY = "bench/small"
INDEX_REPOSITORY = "bench/multiarch"
COLD_REPOSITORY = "bench/cold"
IMAGE_TAG = "latest"
# The upstream logs a request when its response has finished; a cache may still be finishing
# its upstream read when its last client is done.
UPSTREAM_LOG_SETTLE_SECONDS = 0.3
SHA256_RUNS = 5


@dataclass(frozen=True, slots=True)
class Plan:
    """Sizes and durations for one run (full or smoke)."""

    blob_size: int
    clients: int
    connections: int
    rate_seconds: float
    store_sizes: tuple[int, ...]
    latency_samples: int
    containerd: bool

    @classmethod
    def full(cls) -> Plan:
        """The sizes issue 5 asks for."""
        return cls(256 * MIB, 16, 32, 5.0, (1_000, 10_000, 100_000), 300, True)

    @classmethod
    def smoke(cls) -> Plan:
        """Tiny sizes so that the whole harness runs in well under a minute."""
        return cls(4 * MIB, 16, 32, 1.0, (100, 1_000), 30, False)

    @property
    def double_blob_size(self) -> int:
        """The larger blob of the memory scenario (whose peak must stay flat)."""
        return 2 * self.blob_size


@dataclass(slots=True)
class Lab:
    """The running systems and the content they serve."""

    plan: Plan
    workdir: Path
    layout: Layout
    session: aiohttp.ClientSession
    upstream: Service
    distribution: Service
    nginx: Service
    cachesvc: Service | None
    cachesvc_reason: str | None
    cachesvc_uvloop: Service | None
    """The same cachesvc configuration plus ``event_loop: uvloop`` (None when it did not start)."""
    cachesvc_uvloop_reason: str | None
    """Why ``cachesvc_uvloop`` is not running although cachesvc is (None otherwise)."""
    before: Revision | None
    """The older revision ``cachesvc-before`` runs (``--before``); no cachesvc-uvloop then."""
    cachesvc_before: Service | None
    cachesvc_before_reason: str | None
    """Why ``cachesvc_before`` is not running although it was asked for (None otherwise)."""
    big: Image
    small: Image
    index: Image
    sha256_samples: tuple[float, ...]
    """hashlib's single-core sha256 rate (MiB/s), measured before anything was started."""

    @property
    def caches(self) -> list[Service]:
        """Every cache under comparison, cachesvc first when it runs: A B C A B C order.

        For the scenarios where the event loop matters: includes cachesvc-uvloop (or, with
        ``--before``, cachesvc-before in its place).
        """
        candidates = (self.cachesvc, self.cachesvc_before, self.cachesvc_uvloop, self.distribution)
        return [s for s in candidates if s is not None]

    @property
    def default_caches(self) -> list[Service]:
        """cachesvc on its default loop and the baseline only (the longer scenarios)."""
        return [s for s in (self.cachesvc, self.distribution) if s is not None]

    @staticmethod
    def blob_url(service: Service, repository: str, digest: str) -> str:
        """The OCI blob URL of ``digest`` on ``service``."""
        return f"{service.url}/v2/{repository}/blobs/{digest}"

    @staticmethod
    def manifest_url(service: Service, repository: str, reference: str) -> str:
        """The OCI manifest URL of a tag or digest on ``service``."""
        return f"{service.url}/v2/{repository}/manifests/{reference}"

    def nginx_url(self, blob: Descriptor) -> str:
        """nginx serves the layout's ``blobs/`` directory: ``/sha256/<hex>``."""
        return f"{self.nginx.url}/sha256/{blob.digest.removeprefix('sha256:')}"

    async def cold_blob(self, size: int, repository: str = COLD_REPOSITORY) -> Descriptor:
        """A blob nobody has fetched yet: written, pushed straight to the upstream, deleted here."""
        blob = self.layout.layer(size)
        try:
            await upload_blob(self.session, self.upstream.url, repository, blob)
        finally:
            blob.path.unlink(missing_ok=True)
        return blob

    async def cold_image(self, repository: str, tag: str, layer_sizes: list[int]) -> Image:
        """A fresh image pushed to the upstream; its layer files are then deleted here."""
        image = self.layout.image(repository, tag, layer_sizes)
        await push_image(self.session, self.upstream.url, image)
        for layer in image.layers:
            layer.path.unlink(missing_ok=True)
        return image

    async def upstream_gets(self, path: str) -> int:
        """How many GETs of ``path`` the upstream registry has answered (from its access log)."""
        await asyncio.sleep(UPSTREAM_LOG_SETTLE_SECONDS)
        return count_requests(self.upstream.child.log_path, "GET", path)

    @classmethod
    @contextlib.asynccontextmanager
    async def open(
        cls, plan: Plan, log_dir: Path | None = None, before: Revision | None = None
    ) -> AsyncIterator[Lab]:
        """Start everything; on exit stop every child and remove the work directory.

        With ``before``, that revision's cachesvc runs in cachesvc-uvloop's place (run time).
        """
        # The ceiling is the machine's, so it is taken while nothing else of ours runs.
        sha256_samples = tuple(sha256_mib_per_second(plan.blob_size) for _ in range(SHA256_RUNS))
        workdir = Path(tempfile.mkdtemp(prefix="cachesvc-bench-"))
        services: list[Service] = []
        try:
            async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=600)) as session:
                layout = Layout(workdir / "layout")
                upstream = start_registry("upstream", workdir, access_log=True)
                services.append(upstream)
                distribution = start_registry("distribution", workdir, remote_url=upstream.url)
                services.append(distribution)
                nginx = start_nginx(workdir, layout.root / "blobs")
                services.append(nginx)
                reason = cachesvc_unavailable_reason()
                cachesvc = second = second_reason = None
                if reason is None:
                    cachesvc = start_cachesvc(workdir, upstream, CACHESVC)
                    services.append(cachesvc)
                    second, second_reason = _start_second_cachesvc(workdir, upstream, before)
                    if second is not None:
                        services.append(second)
                big = layout.image(BIG_REPOSITORY, IMAGE_TAG, [plan.blob_size, plan.blob_size])
                small = layout.image(SMALL_REPOSITORY, IMAGE_TAG, [4096, 8192, 16384])
                index = layout.index(INDEX_REPOSITORY, IMAGE_TAG, ["amd64", "arm64"], 4096)
                for image in (big, small, index):
                    await push_image(session, upstream.url, image)
                yield cls(
                    plan=plan,
                    workdir=workdir,
                    layout=layout,
                    session=session,
                    upstream=upstream,
                    distribution=distribution,
                    nginx=nginx,
                    cachesvc=cachesvc,
                    cachesvc_reason=reason,
                    cachesvc_uvloop=second if before is None else None,
                    cachesvc_uvloop_reason=second_reason if before is None else None,
                    before=before,
                    cachesvc_before=second if before is not None else None,
                    cachesvc_before_reason=second_reason if before is not None else None,
                    big=big,
                    small=small,
                    index=index,
                    sha256_samples=sha256_samples,
                )
        finally:
            for service in reversed(services):
                service.stop()
            if log_dir is not None:
                _keep_logs(workdir, log_dir)
            shutil.rmtree(workdir, ignore_errors=True)


def _start_second_cachesvc(
    workdir: Path, upstream: Service, before: Revision | None
) -> tuple[Service | None, str | None]:
    """cachesvc-uvloop, or with ``before`` that revision's cachesvc; (None, why) if it fails.

    A failure is reported (exit status 1) and the rest of the run goes on.
    """
    try:
        if before is None:
            return start_cachesvc(workdir, upstream, CACHESVC_UVLOOP, event_loop="uvloop"), None
        reason = cachesvc_unavailable_reason(before.root)
        if reason is not None:
            return None, reason
        return start_cachesvc(workdir, upstream, CACHESVC_BEFORE, source_root=before.root), None
    except ChildError as exc:
        return None, str(exc)


def _keep_logs(workdir: Path, log_dir: Path) -> None:
    log_dir.mkdir(parents=True, exist_ok=True)
    for log in workdir.glob("*.log"):
        shutil.copyfile(log, log_dir / log.name)
