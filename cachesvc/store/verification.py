"""Checking stored bytes against their digests: nothing on disk is trusted blindly.

A file under ``blobs/`` was right when it was committed, but disks rot, operators
copy stores around and files get replaced under their own names. So this process
trusts only what it verified itself (``Verified``): what it committed (an ingest or
a manifest put checked the digest) and what it hashed since start-up. Everything
else is hashed before it counts as complete:

- a manifest is small: hashed before it is served (``Store.get_manifest``);
- a blob is hashed *while* it is sent (``checked_spans``): bytes go out only after
  they were hashed, and the last byte only after the whole digest matched, the
  same release rule a fill follows, so the first hit after a restart costs no
  extra latency and a wrong file never reaches a client whole;
- the scrub (``cachesvc.store.scrub``) and ``cachesvc verify`` walk the whole store
  at a bounded I/O rate (``Throttle``) with ``check_file``.

A file that fails (wrong digest, or the disk cannot read it) is damage: the store
drops it (``Store.drop_damaged``) so the next request refetches it.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

from cachesvc.oci import Digest, Hasher

CHECK_CHUNK = 1024 * 1024  # bytes hashed per read


class Verified:
    """Digests whose stored bytes this process checked (or wrote after checking)."""

    def __init__(self) -> None:
        self._digests: set[str] = set()
        self._lock = threading.Lock()  # commits and scrubs add from worker threads

    def add(self, digest: Digest) -> None:
        """Note that the stored file of ``digest`` matched it."""
        with self._lock:
            self._digests.add(str(digest))

    def discard(self, digest: Digest) -> None:
        """Forget ``digest`` (its file was removed or found damaged)."""
        with self._lock:
            self._digests.discard(str(digest))

    def __contains__(self, digest: object) -> bool:
        return str(digest) in self._digests

    def __len__(self) -> int:
        return len(self._digests)


class Throttle:
    """A bytes-per-second bound for blocking loops (scrub, verify): sleeps to keep it."""

    def __init__(self, rate: int | None) -> None:
        """``rate`` bytes per second; None or 0: unbounded."""
        self._rate = rate or 0
        self._started = time.monotonic()
        self._spent = 0

    def spend(self, count: int) -> None:
        """Account ``count`` bytes read; sleep until the rate allows them."""
        if self._rate <= 0:
            return
        self._spent += count
        ahead = self._spent / self._rate - (time.monotonic() - self._started)
        if ahead > 0:
            time.sleep(ahead)


@dataclass(frozen=True, slots=True)
class Damage:
    """A stored file that does not hold its digest's bytes, and why."""

    digest: Digest
    reason: str  # "mismatch" or "read_error"
    detail: str

    def to_json(self) -> dict[str, str]:
        """As verify jobs and the CLI report it."""
        return {"digest": str(self.digest), "reason": self.reason, "detail": self.detail}


def check_file(path: Path, digest: Digest, throttle: Throttle | None = None) -> Damage | None:
    """Hash a stored file (blocking: a worker thread); None when it matches ``digest``.

    ``FileNotFoundError`` when the file is gone (removed meanwhile: nothing to judge).
    Any other ``OSError`` while reading is damage of its own kind (``read_error``).
    """
    hasher = digest.hasher()
    try:
        with open(path, "rb", buffering=0) as f:
            while chunk := f.read(CHECK_CHUNK):
                hasher.update(chunk)
                if throttle is not None:
                    throttle.spend(len(chunk))
    except FileNotFoundError:
        raise
    except OSError as exc:
        return Damage(digest, "read_error", f"cannot read {path}: {exc.strerror or exc}")
    actual = hasher.hexdigest()
    if actual == digest.hex:
        return None
    return Damage(digest, "mismatch", f"the stored bytes hash to {digest.algorithm}:{actual}")


class StoredMismatch(Exception):
    """Raised by ``checked_spans`` when the file's bytes do not match its digest."""

    def __init__(self, damage: Damage) -> None:
        super().__init__(damage.detail)
        self.damage = damage


async def checked_spans(fd: int, digest: Digest, size: int) -> AsyncIterator[tuple[int, int]]:
    """Spans ``(offset, count)`` of the ``size`` bytes of ``fd`` that may be sent, in order.

    Every byte of a span was hashed before the span is yielded; the last byte of the
    file is yielded only after the whole file hashed to ``digest``. The reads (in a
    worker thread) bring the pages into the page cache, so sending a span right
    after (``sendfile``) reads memory. ``StoredMismatch`` ends it on a wrong digest
    or a read error (the damage says which); the caller aborts the response and
    drops the file.
    """
    loop = asyncio.get_running_loop()
    hasher = digest.hasher()
    hashed = sent = 0
    while hashed < size:
        count = min(CHECK_CHUNK, size - hashed)
        try:
            data = await loop.run_in_executor(None, _read_and_hash, fd, count, hashed, hasher)
        except OSError as exc:
            detail = f"cannot read the stored blob: {exc.strerror or exc}"
            raise StoredMismatch(Damage(digest, "read_error", detail)) from None
        if not data:
            raise StoredMismatch(Damage(digest, "mismatch", f"file ends at {hashed} of {size}"))
        hashed += data
        releasable = min(hashed, size - 1)
        if releasable > sent:
            yield sent, releasable - sent
            sent = releasable
    actual = hasher.hexdigest()
    if actual != digest.hex:
        detail = f"the stored bytes hash to {digest.algorithm}:{actual}"
        raise StoredMismatch(Damage(digest, "mismatch", detail))
    if size > 0:
        yield size - 1, 1


def _read_and_hash(fd: int, count: int, offset: int, hasher: Hasher) -> int:
    data = os.pread(fd, count, offset)
    hasher.update(data)
    return len(data)
