"""``verify``: check every stored file against its digest, on demand, with progress.

Two ways in, one check (``cachesvc.store.scrub.check_store`` / ``check_file``):

- ``POST /admin/v1/verify`` starts a job in the daemon (``StoreChecks``); it shows in
  ``GET /admin/v1/jobs/<id>`` beside prewarm jobs, with files and bytes checked and
  every damaged file (digest, reason, detail). Damaged files are removed, so the
  next request fetches them again.
- ``cachesvc verify --config FILE`` (``run_verify``) walks ``storage.root``'s files
  directly, without the daemon and without opening its index (safe while a daemon
  runs), prints progress to stderr and each damaged file to stdout, and exits 1 when
  it found damage. ``--remove`` deletes the damaged files (a running daemon then
  fetches them again on the next request).
"""

from __future__ import annotations

import asyncio
import secrets
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, TextIO

from cachesvc.errors import NotFound
from cachesvc.metrics import Metrics
from cachesvc.store.content import blob_path, stored_files
from cachesvc.store.scrub import CheckProgress, check_store
from cachesvc.store.store import Store
from cachesvc.store.verification import Throttle, check_file

CheckState = Literal["running", "done", "failed"]
PROGRESS_EVERY = 2.0  # seconds between progress lines of ``cachesvc verify``


@dataclass(slots=True)
class CheckJob:
    """One whole-store check run by the daemon."""

    id: str
    progress: CheckProgress = field(default_factory=CheckProgress)
    state: CheckState = "running"
    reason: str | None = None
    created: float = field(default_factory=time.time)
    finished: float | None = None
    task: asyncio.Task[None] | None = None

    def to_json(self) -> dict[str, object]:
        """As /admin/v1/jobs/<id> shows it."""
        return {
            "id": self.id, "kind": "verify", "state": self.state, "reason": self.reason,
            "created": self.created, "finished": self.finished, **self.progress.to_json(),
        }  # fmt: skip


class StoreChecks:
    """Verify jobs of the daemon, kept for ``retention`` seconds after they end."""

    def __init__(self, store: Store, metrics: Metrics, *, retention: float) -> None:
        self._store = store
        self._metrics = metrics
        self._retention = retention
        self._jobs: dict[str, CheckJob] = {}

    def submit(self) -> CheckJob:
        """Start checking the whole store now."""
        self._prune()
        job = CheckJob(secrets.token_hex(8))
        self._jobs[job.id] = job
        job.task = asyncio.get_running_loop().create_task(self._run(job), name=f"verify {job.id}")
        return job

    def find(self, job_id: str) -> CheckJob | None:
        """A verify job by id, or None (it may be a prewarm job)."""
        self._prune()
        return self._jobs.get(job_id)

    def get(self, job_id: str) -> CheckJob:
        """A verify job by id (NotFound once it aged out)."""
        job = self.find(job_id)
        if job is None:
            raise NotFound(f"no verify job {job_id[:40]!r}")
        return job

    async def close(self) -> None:
        """Cancel running checks (shutdown)."""
        tasks = [j.task for j in self._jobs.values() if j.task is not None and not j.task.done()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _run(self, job: CheckJob) -> None:
        try:
            await check_store(self._store, job.progress, "verify", metrics=self._metrics)
            job.state = "done"
        except OSError as exc:
            job.state, job.reason = "failed", f"cannot walk the store: {exc.strerror or exc}"
        finally:
            job.finished = time.time()

    def _prune(self) -> None:
        horizon = time.time() - self._retention
        for job_id in [j.id for j in self._jobs.values() if j.finished and j.finished < horizon]:
            del self._jobs[job_id]


def run_verify(root: Path, out: TextIO, err: TextIO, *, remove: bool, rate: int | None) -> int:
    """Check every file under ``root/blobs`` (blocking); 1 when any is damaged, else 0."""
    blob_root = root / "blobs"
    if not blob_root.is_dir():
        print(f"cachesvc verify: {blob_root} does not exist: nothing to check", file=err)
        return 1
    files = list(stored_files(blob_root))
    total = sum(size for _, size, _ in files)
    throttle = Throttle(rate)
    checked = checked_bytes = damaged = 0
    last = time.monotonic()
    for digest, size, _ in files:
        try:
            damage = check_file(blob_path(blob_root, digest), digest, throttle)
        except FileNotFoundError:
            damage = None  # removed meanwhile by a running daemon
        checked, checked_bytes = checked + 1, checked_bytes + size
        if damage is not None:
            damaged += 1
            print(f"damaged {damage.digest} ({damage.reason}): {damage.detail}", file=out)
            if remove:
                blob_path(blob_root, digest).unlink(missing_ok=True)
        if time.monotonic() - last >= PROGRESS_EVERY:
            last = time.monotonic()
            print(f"verify: {checked}/{len(files)} files, {checked_bytes}/{total} bytes", file=err)
    fate = " (removed: they are fetched again on the next request)" if remove and damaged else ""
    print(
        f"verify: checked {checked} files, {checked_bytes} bytes: {damaged} damaged{fate}",
        file=err,
    )
    return 1 if damaged else 0
