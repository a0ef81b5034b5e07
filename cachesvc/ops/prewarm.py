"""Prewarm jobs: fetch images into the cache before anyone pulls them.

A job takes image references and, for each, does what a containerd pull through the
mirror does, through the same ``Mirror`` calls the /v2 handlers make:

1. resolve: HEAD the manifest by tag (containerd's resolve), then GET it by digest;
2. an index is walked to the manifests of the requested platforms only (default:
   this node's, ``node_platform()``), which are fetched by digest;
3. fetch: config and layers through ``Mirror.blob`` - the same single-flight fills,
   so a prewarm and a pull of the same blob share one upstream GET. At most
   ``prewarm.concurrency`` blobs are in flight across all jobs; blobs already cached
   count as done at once.

Each image moves ``queued -> resolving -> fetching -> done`` or ends ``failed`` with
a reason; bytes and blobs done/total add up to the descriptors' sizes. Cancelling a
job stops following its fills (the fills themselves run on: other clients may be
reading them, and the bytes are wanted anyway). Finished jobs are kept in memory
for ``prewarm.retention``. With ``pin``, the image is pinned as it starts, incomplete
until every blob is stored (``cachesvc.store.pins``): a prewarm again completes it.
"""

from __future__ import annotations

import asyncio
import logging
import platform as host_platform
import secrets
import time

from cachesvc.background import cancel_all
from cachesvc.config import PrewarmConfig
from cachesvc.errors import AdminError, CachesvcError, ManifestInvalid, NotFound, RegistryError
from cachesvc.metrics import Metrics
from cachesvc.mirror.blobs import CachedBlob
from cachesvc.mirror.facade import Mirror
from cachesvc.mirror.routing import Router, Target
from cachesvc.oci import ACCEPT_ANY_MANIFEST, Digest, normalize_accept
from cachesvc.oci.image import Index, Manifest, Platform, parse_manifest
from cachesvc.oci.reference import parse_reference
from cachesvc.ops.jobs import ImageProgress, Job, cancel_running, forget_finished
from cachesvc.store.pins import Pins

log = logging.getLogger("cachesvc.prewarm")
MAX_PLATFORMS = 16

# What containerd sends when it resolves a reference, so prewarm shares its tag cache.
CONTAINERD_ACCEPT = normalize_accept([ACCEPT_ANY_MANIFEST])
MAX_IMAGES_PER_JOB = 500

_ARCH = {"x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64",
         "armv7l": "arm/v7", "armv6l": "arm/v6", "ppc64le": "ppc64le", "s390x": "s390x",
         "riscv64": "riscv64", "i686": "386", "i386": "386"}  # fmt: skip


# The platform manifests of one image: (digest, manifest, platform text or None).
_Chosen = list[tuple[Digest, Manifest, str | None]]


def node_platform() -> str:
    """This node's platform as OCI writes it (``linux/amd64``, ``linux/arm64``)."""
    machine = host_platform.machine().lower()
    return f"linux/{_ARCH.get(machine, machine)}"


def normalize_platform(text: str) -> str:
    """``linux/x86_64`` -> ``linux/amd64``; checks the ``os/arch[/variant]`` shape."""
    parts = text.strip().lower().split("/")
    if len(parts) not in (2, 3) or not all(parts):
        raise AdminError(f"invalid platform {text[:40]!r}: expected os/arch[/variant]")
    parts[1] = _ARCH.get(parts[1], parts[1])
    return "/".join(parts)


def platform_matches(wanted: str, offered: str | None) -> bool:
    """``linux/arm64`` matches any arm64 variant; ``linux/arm64/v8`` only v8."""
    if offered is None:
        return False
    parts = wanted.split("/")
    return offered.split("/")[: len(parts)] == parts


def _event(event: str, job: Job, **fields: object) -> None:
    log.info("prewarm %s", event, extra={"fields": {"event": event, "job": job.id, **fields}})


class Prewarmer:
    """Runs prewarm jobs against the mirror."""

    def __init__(
        self,
        mirror: Mirror,
        pins: Pins,
        metrics: Metrics,
        config: PrewarmConfig,
        default_registry: str | None,
    ) -> None:
        self._mirror = mirror
        self._pins = pins
        self._metrics = metrics
        self._config = config
        self._default = default_registry
        self._jobs: dict[str, Job] = {}
        self._slots = asyncio.Semaphore(config.concurrency)

    @property
    def router(self) -> Router:
        """How references are routed (the mirror's router)."""
        return self._mirror.router

    # -- the API the admin routes use ------------------------------------------------

    def submit(self, refs: list[str], platforms: list[str] | None, pin: bool) -> Job:
        """Validate and start a job (AdminError names every bad reference)."""
        if not refs or len(refs) > MAX_IMAGES_PER_JOB:
            raise AdminError(f"give 1 to {MAX_IMAGES_PER_JOB} image references")
        if platforms is not None and len(platforms) > MAX_PLATFORMS:
            raise AdminError(f"give at most {MAX_PLATFORMS} platforms")
        wanted = [normalize_platform(p) for p in platforms] if platforms else [node_platform()]
        wanted = list(dict.fromkeys(wanted))  # duplicates would repeat the same lookups
        images, bad = [], []
        for ref in refs:
            try:
                reference = parse_reference(ref, self._mirror.router, self._default)
            except (CachesvcError, ValueError) as exc:
                bad.append(f"{ref[:100]}: {exc}")
                continue
            images.append(ImageProgress(str(reference), reference))
        if bad:
            raise AdminError("invalid image references: " + "; ".join(bad))
        self._prune()
        job = Job(secrets.token_hex(8), images, wanted, pin)
        self._jobs[job.id] = job
        self._metrics.prewarm_jobs_running.inc()
        job.task = asyncio.get_running_loop().create_task(self._run(job), name=f"prewarm {job.id}")
        _event("submitted", job, images=[i.ref for i in images], platforms=wanted, pin=pin)
        return job

    def get(self, job_id: str) -> Job:
        """A job by id (NotFound once it has aged out)."""
        self._prune()
        job = self._jobs.get(job_id)
        if job is None:
            raise NotFound(f"no prewarm job {job_id[:40]!r} (finished jobs are kept for "
                           f"{self._config.retention:g}s)")  # fmt: skip
        return job

    def list(self) -> list[Job]:
        """Every job still kept, newest first."""
        self._prune()
        return sorted(self._jobs.values(), key=lambda j: j.created, reverse=True)

    def cancel(self, job_id: str) -> Job:
        """Cancel a job's images that are not finished; a finished job is unchanged."""
        job = self.get(job_id)
        cancel_running(job)
        return job

    async def close(self) -> None:
        """Cancel every running job (shutdown)."""
        await cancel_all(j.task for j in self._jobs.values())

    def _prune(self) -> None:
        forget_finished(self._jobs, self._config.retention)

    # -- running -----------------------------------------------------------------------

    async def _run(self, job: Job) -> None:
        job.state, job.started = "running", time.time()
        tasks = [asyncio.ensure_future(self._image(job, image)) for image in job.images]
        try:
            await asyncio.gather(*tasks)
            failed = [i for i in job.images if i.state == "failed"]
            job.state = "failed" if failed else "done"
        except asyncio.CancelledError:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            job.state = "cancelled"
        finally:
            job.finished = time.time()
            self._metrics.prewarm_jobs_running.dec()
            self._metrics.prewarm_jobs.labels(job.state).inc()
            summary = job.to_json()
            _event("finished", job, state=job.state, bytes_total=summary["bytes_total"],
                   failed=[i.ref for i in job.images if i.state == "failed"],
                   seconds=round(job.finished - (job.started or job.finished), 3))  # fmt: skip

    async def _image(self, job: Job, image: ImageProgress) -> None:
        image.started = time.time()
        try:
            await self._prewarm(job, image)
            image.state = "done"
        except RegistryError as exc:
            image.state, image.reason = "failed", exc.message
        except AdminError as exc:
            image.state, image.reason = "failed", str(exc)
        except asyncio.CancelledError:
            image.state, image.reason = "failed", "cancelled"
            raise
        except Exception as exc:  # a job must always finish, whatever an image did
            log.exception("prewarm %s: %s failed unexpectedly", job.id, image.ref)
            image.state, image.reason = "failed", f"internal error: {type(exc).__name__}"
        finally:
            image.finished = time.time()
            if image.state in ("done", "failed"):
                self._metrics.prewarm_images.labels(image.state).inc()
                _event(f"image {image.state}", job, image=image.ref, digest=image.digest,
                       reason=image.reason, bytes=image.bytes_done)  # fmt: skip

    async def _platform_manifests(self, job: Job, target: Target, index: Index) -> _Chosen:
        """The manifest of each of the job's platforms in ``index``, fetched by digest."""
        chosen: _Chosen = []
        for wanted in job.platforms:
            choice = next(
                (e for e in index.manifests if platform_matches(wanted, _text(e.platform))), None
            )
            if choice is None:
                raise AdminError(
                    f"no manifest for {wanted} in the index (it has: "
                    f"{', '.join(sorted(set(index.platforms())))})"
                )
            child = choice.digest
            sub = await self._mirror.manifest(target, str(child), CONTAINERD_ACCEPT, head=False)
            entry = _parsed(child, sub.record.media_type, sub.body)
            if isinstance(entry, Index):
                raise ManifestInvalid(f"manifest {child}: the {wanted} entry is an index too")
            chosen.append((child, entry, _text(choice.platform)))
        return chosen

    async def _prewarm(self, job: Job, image: ImageProgress) -> None:
        reference = image.reference
        assert reference is not None
        target = reference.target  # routed as containerd's ?ns=<registry> request would be
        root, members, blobs = await self._resolve(job, image, target)
        progress: dict[str, int] = {}
        pinned_before = job.pin and any(p.matches(reference) for p in self._pins.list())
        pin = None
        if job.pin:
            # Pin before fetching, so blobs committed early are not evicted while later
            # ones still arrive; a failed image is unpinned again below (unless it was
            # pinned before this job). Incomplete until every blob is stored, so a
            # daemon killed meanwhile leaves a pin that says so.
            pin = self._pins.add(
                reference, str(root), members | set(blobs), image.platforms, complete=False
            )
        tasks = [
            asyncio.ensure_future(self._fetch(image, target, b, s, progress))
            for b, s in blobs.items()
        ]
        try:
            await asyncio.gather(*tasks)
            if pin is not None:
                self._pins.completed(pin)
        except BaseException:
            if job.pin and not pinned_before:
                self._pins.remove(reference)
            raise
        finally:
            await cancel_all(tasks)

    async def _resolve(
        self, job: Job, image: ImageProgress, target: Target
    ) -> tuple[Digest, set[str], dict[str, int]]:
        """Resolve as containerd does; (root digest, manifest digests, blob sizes by digest)."""
        reference = image.reference
        assert reference is not None
        image.state = "resolving"
        mirror = self._mirror
        # containerd's resolve: HEAD by tag (or digest), then GET the manifest by digest.
        head = await mirror.manifest(target, reference.reference, CONTAINERD_ACCEPT, head=True)
        root = head.record.digest
        answer = await mirror.manifest(target, str(root), CONTAINERD_ACCEPT, head=False)
        image.digest = str(root)
        parsed = _parsed(root, answer.record.media_type, answer.body)
        if isinstance(parsed, Index):
            manifests = await self._platform_manifests(job, target, parsed)
        else:
            manifests = [(root, parsed, None)]
        members = {str(root), *(str(digest) for digest, _, _ in manifests)}
        blobs: dict[str, int] = {}
        for _, manifest, platform in manifests:
            image.platforms.append(platform or "unknown")
            blobs.update((str(d.digest), d.size) for d in manifest.blobs)
        image.blobs_total, image.bytes_total = len(blobs), sum(blobs.values())
        image.state = "fetching"
        _event("image resolved", job, image=image.ref, digest=image.digest,
               platforms=image.platforms, blobs=image.blobs_total,
               bytes=image.bytes_total)  # fmt: skip
        return root, members, blobs

    async def _fetch(
        self, image: ImageProgress, target: Target, blob: str, size: int, progress: dict[str, int]
    ) -> None:
        """One blob of an image through the mirror (a hit or a fill, as a pull would);
        ``progress`` holds each blob's bytes so far, ``image.bytes_done`` their sum."""
        async with self._slots:
            got = await self._mirror.blob(target, Digest.parse(blob))
            source = got.source
            if isinstance(source, CachedBlob):
                if source.lease is not None:
                    source.lease.release()
                self._metrics.prewarm_bytes.labels("cached").inc(size)
                image.blobs_cached += 1
            else:
                fill = source.fill
                async for received in fill.progress():  # woken by the fill, no polling
                    progress[blob] = min(received, size)
                    image.bytes_done = sum(progress.values())
                await fill.drain()
                if fill.error is not None:
                    raise fill.error
                self._metrics.prewarm_bytes.labels("fetched").inc(size)
        progress[blob] = size
        image.blobs_done += 1
        image.bytes_done = sum(progress.values())


def _parsed(digest: Digest, media_type: str, body: bytes | None) -> Manifest | Index:
    """The image model of a fetched manifest; ManifestInvalid naming it when it is bad."""
    try:
        return parse_manifest(media_type, body or b"")
    except ManifestInvalid as exc:
        raise ManifestInvalid(f"manifest {digest}: {exc.message}") from None


def _text(platform: Platform | None) -> str | None:
    return str(platform) if platform is not None else None
