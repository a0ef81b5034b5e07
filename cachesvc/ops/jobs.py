"""Prewarm jobs as the admin API shows them, and how long ended jobs are kept.

The node's ``Prewarmer`` and the cluster's ``ClusterPrewarm`` both keep jobs by id,
cancel them on request and forget them ``retention`` seconds after they end (so a client
can still read how a job ended); the records and those two rules live here, once.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Literal, Protocol, TypeVar

from cachesvc.oci.reference import ImageReference

__all__ = [
    "ImageProgress", "ImageState", "Job", "JobState", "cancel_running", "forget_finished",
]  # fmt: skip

ImageState = Literal["queued", "resolving", "fetching", "done", "failed"]
JobState = Literal["queued", "running", "done", "failed", "cancelled"]


@dataclass(slots=True)
class ImageProgress:
    """One image of a job."""

    ref: str
    reference: ImageReference | None
    state: ImageState = "queued"
    reason: str | None = None
    digest: str | None = None
    platforms: list[str] = field(default_factory=list)
    bytes_done: int = 0
    bytes_total: int = 0
    blobs_done: int = 0
    blobs_total: int = 0
    blobs_cached: int = 0  # of blobs_done: already in the cache, nothing fetched
    started: float | None = None
    finished: float | None = None

    def to_json(self) -> dict[str, object]:
        """As /admin/v1/jobs/<id> shows it."""
        return {
            "ref": self.ref, "state": self.state, "reason": self.reason,
            "digest": self.digest, "platforms": self.platforms,
            "bytes_done": self.bytes_done, "bytes_total": self.bytes_total,
            "blobs_done": self.blobs_done, "blobs_total": self.blobs_total,
            "blobs_cached": self.blobs_cached,
            "started": self.started, "finished": self.finished,
        }  # fmt: skip


@dataclass(slots=True)
class Job:
    """A prewarm job: images, requested platforms, whether to pin, and its state."""

    id: str
    images: list[ImageProgress]
    platforms: list[str]
    pin: bool
    created: float = field(default_factory=time.time)
    state: JobState = "queued"
    started: float | None = None
    finished: float | None = None
    task: asyncio.Task[None] | None = None

    def to_json(self) -> dict[str, object]:
        """As /admin/v1/jobs/<id> shows it, with totals over its images."""
        return {
            "id": self.id, "state": self.state, "platforms": self.platforms, "pin": self.pin,
            "created": self.created, "started": self.started, "finished": self.finished,
            "bytes_done": sum(i.bytes_done for i in self.images),
            "bytes_total": sum(i.bytes_total for i in self.images),
            "blobs_done": sum(i.blobs_done for i in self.images),
            "blobs_total": sum(i.blobs_total for i in self.images),
            "images": [i.to_json() for i in self.images],
        }  # fmt: skip


_KeptJob = TypeVar("_KeptJob", bound="_Kept")


class _Kept(Protocol):
    """What the job registries (node and cluster) keep: a task and when it finished."""

    finished: float | None
    task: asyncio.Task[None] | None


def forget_finished(jobs: dict[str, _KeptJob], retention: float) -> None:
    """Drop the jobs that finished more than ``retention`` seconds ago (both registries
    keep ended jobs that long so a client can still read how they ended)."""
    horizon = time.time() - retention
    for job_id in [k for k, j in jobs.items() if j.finished and j.finished < horizon]:
        del jobs[job_id]


def cancel_running(job: _Kept) -> None:
    """Cancel a job's task unless it has ended (an ended job stays as it ended)."""
    if job.task is not None and not job.task.done():
        job.task.cancel()
