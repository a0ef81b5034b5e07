"""What the store knows about its blobs beyond their bytes, in one diskcache.

Keys (the values are plain tuples, lists and strings, so the index stays readable
across versions)::

    manifest:<digest>   media type of a stored manifest (its bytes are a blob file)
    tag:<key>           (digest, media type, size, checked_at) of a tag; <key> is
                        registry NUL repository NUL tag NUL accept
    origin:<digest>     ((registry, repository), ...) a manifest was fetched for
    covered:<key>       the digest of a signature-verified index that pins a child manifest;
                        <key> is registry NUL repository NUL child digest (the policy
                        re-verifies that index after a restart instead of refusing the child)
    atime:<digest>      coarse last access (batched: see ``touch``/``flush``)
    pins                the pin list of stores from before ``<root>/pins.json`` (read once
                        by ``cachesvc.store.pins``, which keeps pins outside the index)

Every method is a blocking SQLite call except ``touch`` and ``recent_access`` (memory):
async code calls the others from a worker thread, or where the call is rare and small.
A failed write (a full disk, an I/O error) raises ``OSError`` like the file writes do
(``_written``), so callers meet one kind of storage error.
"""

from __future__ import annotations

import contextlib
import errno
import sqlite3
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import diskcache

from cachesvc.errors import CachesvcError
from cachesvc.oci import Digest

# Last-access times are kept in memory and written to the index at most this often,
# so a cache hit never writes to disk on the request path.
ACCESS_FLUSH_SECONDS = 30.0


@dataclass(frozen=True, slots=True)
class TagRecord:
    """What a tag pointed at when upstream was last asked."""

    digest: Digest
    media_type: str
    size: int
    checked_at: float  # wall-clock time of the last successful upstream answer


@contextlib.contextmanager
def _written() -> Iterator[None]:
    """SQLite's errors on a write as the ``OSError`` a file write would raise."""
    try:
        yield
    except sqlite3.Error as exc:
        code = errno.ENOSPC if "full" in str(exc) else errno.EIO
        raise OSError(code, f"index write failed: {exc}") from None


class Index:
    """Media types, tags, origins, access times and pins under ``<root>/index``."""

    def __init__(self, directory: Path) -> None:
        self._cache = diskcache.Cache(str(directory), eviction_policy="none")
        self._access: dict[str, float] = {}
        self._origins: set[tuple[str, str, str]] = set()

    def close(self) -> None:
        """Flush access times and close the database."""
        self.flush()
        self._cache.close()

    # -- access times ----------------------------------------------------------------

    def touch(self, digest: Digest) -> None:
        """Note an access (kept in memory; written by ``flush``)."""
        self._access[str(digest)] = time.time()

    def flush(self) -> None:
        """Write the batched last-access times (the daemon calls this in a worker thread
        every ``ACCESS_FLUSH_SECONDS``; swapping the dict is atomic)."""
        pending, self._access = self._access, {}
        if pending:
            with _written(), self._cache.transact():
                for key, when in pending.items():
                    self._cache.set(f"atime:{key}", when)

    def last_access(self, digest: Digest) -> float | None:
        """The last noted access, or None when none was ever noted."""
        key = str(digest)
        recent = self._access.get(key)  # .get: inventory reads this from a thread
        if recent is not None:
            return recent
        value = self._cache.get(f"atime:{key}")
        return value if isinstance(value, float) else None

    # -- manifests and origins -----------------------------------------------------------

    def media_type(self, digest: Digest) -> str | None:
        """The media type of a stored manifest, or None when ``digest`` is no manifest."""
        value = self._cache.get(f"manifest:{digest}")
        return value if isinstance(value, str) else None

    def set_media_type(self, digest: Digest, media_type: str) -> None:
        """Record that ``digest`` is a manifest of ``media_type``."""
        with _written():
            self._cache.set(f"manifest:{digest}", media_type)

    def manifest_digests(self) -> Iterator[tuple[Digest, str]]:
        """Every manifest the index knows, with its media type."""
        for key in list(self._cache.iterkeys()):
            if not (isinstance(key, str) and key.startswith("manifest:")):
                continue
            try:
                digest = Digest.parse(key[len("manifest:") :])
            except CachesvcError:
                continue
            media_type = self._cache.get(key)
            if isinstance(media_type, str):
                yield digest, media_type

    def note_origin(self, digest: Digest, registry: str, repository: str) -> None:
        """Remember that a manifest was fetched for ``registry/repository`` (inventory)."""
        entry = (str(digest), registry, repository)
        if entry in self._origins:
            return
        self._origins.add(entry)
        key = f"origin:{digest}"
        known = self._cache.get(key)
        origins = set(known) if isinstance(known, tuple) else set()
        if (registry, repository) not in origins:
            origins.add((registry, repository))
            with _written():
                self._cache.set(key, tuple(sorted(origins)))

    def origins(self, digest: Digest) -> tuple[tuple[str, str], ...]:
        """The (registry, repository) pairs a manifest was fetched for."""
        value = self._cache.get(f"origin:{digest}")
        return tuple(value) if isinstance(value, tuple) else ()

    def forget_origins(self, digest: Digest) -> None:
        """Drop what ``note_origin`` remembered for a purged manifest."""
        self._cache.delete(f"origin:{digest}")
        self._origins = {o for o in self._origins if o[0] != str(digest)}

    def note_coverage(
        self, registry: str, repository: str, index: Digest, children: tuple[str, ...]
    ) -> None:
        """Remember that the verified ``index`` (of ``registry/repository``) pins ``children``."""
        with _written():
            for child in children:
                self._cache.set(f"covered:{registry}\0{repository}\0{child}", str(index))

    def covering_index(self, registry: str, repository: str, child: Digest) -> Digest | None:
        """The verified index ``note_coverage`` recorded for ``child`` there, if any."""
        value = self._cache.get(f"covered:{registry}\0{repository}\0{child}")
        try:
            return Digest.parse(value) if isinstance(value, str) else None
        except CachesvcError:
            return None

    def forget(self, digest: Digest) -> None:
        """Drop a removed blob's media type and access time."""
        self._cache.delete(f"manifest:{digest}")
        self._cache.delete(f"atime:{digest}")
        self._access.pop(str(digest), None)

    # -- tags ------------------------------------------------------------------------

    def get_tag(self, key: str) -> TagRecord | None:
        """The last known mapping for a tag key (registry, repository, tag, accept)."""
        value = self._cache.get(f"tag:{key}")
        if not isinstance(value, tuple) or len(value) != 4:
            return None
        digest_text, media_type, size, checked_at = value
        try:
            return TagRecord(Digest.parse(digest_text), media_type, size, checked_at)
        except (CachesvcError, TypeError, AttributeError):  # a damaged entry is a miss
            return None

    def put_tag(self, key: str, record: TagRecord) -> None:
        """Remember what a tag points at."""
        with _written():
            self._cache.set(
                f"tag:{key}",
                (str(record.digest), record.media_type, record.size, record.checked_at),
            )

    def tags(self) -> Iterator[tuple[str, TagRecord]]:
        """Every remembered tag mapping as (key, record); keys are NUL-joined
        (registry, repository, tag, accept)."""
        for key in list(self._cache.iterkeys()):
            if isinstance(key, str) and key.startswith("tag:"):
                record = self.get_tag(key[4:])
                if record is not None:
                    yield key[4:], record

    def delete_tag(self, key: str) -> None:
        """Forget a tag mapping."""
        self._cache.delete(f"tag:{key}")

    # -- pins ------------------------------------------------------------------------

    def load_pins(self) -> list[dict[str, Any]]:
        """The pin list a store from before ``pins.json`` kept here (see pins.py)."""
        value = self._cache.get("pins")
        return list(value) if isinstance(value, list) else []
