"""The content-addressed store on the node's disk. The only module that knows the layout.

::

    <root>/
      blobs/sha256/<first two hex>/<hex>   verified content: layers, configs, manifests
      tmp/<hex>.<random>                   fills in progress; every one is removed at start-up
      index/                               diskcache: manifest media types, tag mappings,
                                           coarse last-access times, the repositories a
                                           manifest was fetched for, the pin list

A file under ``blobs/`` is always complete and its name is its digest: it gets there
only by ``commit``, an atomic rename of a temp file whose digest was checked (and
fsynced) by the writer. Paths are built only from a parsed ``Digest``, so nothing a
client sends can name a file outside the root.

Sizes come from ``stat`` and last access from the index, so size-bounded LRU
eviction, age limits and pinning can walk ``iter_blobs`` without a new layout.
``usage`` (bytes and entries under ``blobs/``) is counted once at start-up and kept
current by ``commit`` and ``remove``, so metrics and eviction never walk the disk to
know how full the store is.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import diskcache

from cachesvc.errors import CachesvcError, StoreError
from cachesvc.oci import Digest

# Last-access times are kept in memory and written to the index at most this often,
# so a cache hit never writes to disk on the request path.
ACCESS_FLUSH_SECONDS = 30.0


@dataclass(frozen=True, slots=True)
class ManifestRecord:
    """A manifest the store holds: its exact bytes live in the blob file."""

    digest: Digest
    media_type: str
    size: int


@dataclass(frozen=True, slots=True)
class TagRecord:
    """What a tag pointed at when upstream was last asked."""

    digest: Digest
    media_type: str
    size: int
    checked_at: float  # wall-clock time of the last successful upstream answer


@dataclass(frozen=True, slots=True)
class BlobEntry:
    """One stored blob as eviction and inventory see it."""

    digest: Digest
    size: int
    last_access: float


class Store:
    """Blobs, manifests and tag mappings under one storage root."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.blob_root = root / "blobs"
        self.tmp_root = root / "tmp"
        try:
            for directory in (self.blob_root, self.tmp_root):
                directory.mkdir(parents=True, exist_ok=True)
            self.removed_temp_files = self._clean_tmp()
            self._index = diskcache.Cache(str(root / "index"), eviction_policy="none")
        except OSError as exc:
            raise StoreError(f"cannot use storage root {root}: {exc.strerror or exc}") from None
        self._access: dict[str, float] = {}
        self._usage_lock = threading.Lock()
        self.usage_bytes, self.usage_entries = self._scan_usage()
        self._origins: set[tuple[str, str, str]] = set()

    def _scan_usage(self) -> tuple[int, int]:
        total = count = 0
        for directory, _, files in os.walk(self.blob_root):
            for name in files:
                with contextlib.suppress(OSError):
                    total += os.stat(os.path.join(directory, name)).st_size
                    count += 1
        return total, count

    def _account(self, delta_bytes: int, delta_entries: int) -> None:
        with self._usage_lock:
            self.usage_bytes += delta_bytes
            self.usage_entries += delta_entries

    def close(self) -> None:
        """Flush access times and close the index."""
        self.flush_access()
        self._index.close()

    def _clean_tmp(self) -> int:
        removed = 0
        for entry in os.scandir(self.tmp_root):
            if entry.is_dir(follow_symlinks=False):
                shutil.rmtree(entry.path, ignore_errors=True)
            else:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(entry.path)
            removed += 1
        return removed

    # -- blobs ---------------------------------------------------------------------

    def path(self, digest: Digest) -> Path:
        """Where the verified content of ``digest`` lives (it may not exist)."""
        return self.blob_root / digest.algorithm / digest.hex[:2] / digest.hex

    def size(self, digest: Digest) -> int | None:
        """The size of a stored blob, or None when it is not stored."""
        try:
            return self.path(digest).stat().st_size
        except FileNotFoundError:
            return None

    def new_temp(self, digest: Digest) -> Path:
        """A fresh temp path for a fill of ``digest``."""
        return self.tmp_root / f"{digest.hex}.{secrets.token_hex(6)}"

    def commit(self, temp: Path, digest: Digest) -> Path:
        """Move a verified, fsynced temp file into place (atomic; fsyncs the directory)."""
        final = self.path(digest)
        final.parent.mkdir(parents=True, exist_ok=True)
        previous = self.size(digest)
        os.replace(temp, final)
        new_size = final.stat().st_size
        self._account(new_size - (previous or 0), 0 if previous is not None else 1)
        fd = os.open(final.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        self.touch(digest)
        return final

    def discard(self, temp: Path) -> None:
        """Remove a temp file (a failed or abandoned fill)."""
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp)

    def remove(self, digest: Digest) -> bool:
        """Delete a stored blob and its index entries; True when it existed."""
        self._index.delete(f"manifest:{digest}")
        self._index.delete(f"atime:{digest}")
        self._access.pop(str(digest), None)
        size = self.size(digest)
        try:
            os.unlink(self.path(digest))
        except FileNotFoundError:
            return False
        self._account(-(size or 0), -1)
        return True

    def touch(self, digest: Digest) -> None:
        """Note an access (kept in memory; flushed to the index in batches)."""
        self._access[str(digest)] = time.time()

    def flush_access(self) -> None:
        """Write the batched last-access times to the index (the daemon calls this in a
        worker thread every ``ACCESS_FLUSH_SECONDS``; swapping the dict is atomic)."""
        pending, self._access = self._access, {}
        if pending:
            with self._index.transact():
                for key, when in pending.items():
                    self._index.set(f"atime:{key}", when)

    def last_access(self, digest: Digest) -> float:
        """Coarse last access time (falls back to the file's mtime)."""
        key = str(digest)
        recent = self._access.get(key)  # .get: inventory reads this from a thread
        if recent is not None:
            return recent
        value = self._index.get(f"atime:{key}")
        if isinstance(value, float):
            return value
        try:
            return self.path(digest).stat().st_mtime
        except FileNotFoundError:
            return 0.0

    def iter_blobs(self) -> Iterator[BlobEntry]:
        """Every stored blob with its size and last access (walks the disk)."""
        for algorithm_dir in os.scandir(self.blob_root):
            if not algorithm_dir.is_dir():
                continue
            for prefix in os.scandir(algorithm_dir.path):
                if not prefix.is_dir():
                    continue
                for entry in os.scandir(prefix.path):
                    try:
                        digest = Digest.parse(f"{algorithm_dir.name}:{entry.name}")
                        size = entry.stat().st_size
                    except (
                        CachesvcError,
                        OSError,
                    ):  # a foreign file in the tree is not ours to list
                        continue
                    yield BlobEntry(digest, size, self.last_access(digest))

    # -- manifests -------------------------------------------------------------------

    def put_manifest(self, digest: Digest, media_type: str, body: bytes) -> ManifestRecord:
        """Store verified manifest bytes with their media type."""
        if self.size(digest) != len(body):
            temp = self.new_temp(digest)
            with open(temp, "wb") as f:
                f.write(body)
                f.flush()
                os.fsync(f.fileno())
            self.commit(temp, digest)
        self._index.set(f"manifest:{digest}", media_type)
        return ManifestRecord(digest, media_type, len(body))

    def get_manifest(self, digest: Digest) -> tuple[ManifestRecord, bytes] | None:
        """A stored manifest and its exact bytes, or None."""
        media_type = self._index.get(f"manifest:{digest}")
        if not isinstance(media_type, str):
            return None
        try:
            body = self.path(digest).read_bytes()
        except FileNotFoundError:
            return None
        self.touch(digest)
        return ManifestRecord(digest, media_type, len(body)), body

    # -- tags ------------------------------------------------------------------------

    def get_tag(self, key: str) -> TagRecord | None:
        """The last known mapping for a tag key (registry, repository, tag, accept)."""
        value = self._index.get(f"tag:{key}")
        if not isinstance(value, tuple) or len(value) != 4:
            return None
        digest_text, media_type, size, checked_at = value
        try:
            return TagRecord(Digest.parse(digest_text), media_type, size, checked_at)
        except (CachesvcError, TypeError, AttributeError):  # a damaged entry is a miss
            return None

    def put_tag(self, key: str, record: TagRecord) -> None:
        """Remember what a tag points at."""
        self._index.set(
            f"tag:{key}",
            (str(record.digest), record.media_type, record.size, record.checked_at),
        )

    def tags(self) -> Iterator[tuple[str, TagRecord]]:
        """Every remembered tag mapping as (key, record); keys are NUL-joined
        (registry, repository, tag, accept)."""
        for key in list(self._index.iterkeys()):
            if isinstance(key, str) and key.startswith("tag:"):
                record = self.get_tag(key[4:])
                if record is not None:
                    yield key[4:], record

    def delete_tag(self, key: str) -> None:
        """Forget a tag mapping."""
        self._index.delete(f"tag:{key}")

    # -- inventory and pins ----------------------------------------------------------

    def note_origin(self, digest: Digest, registry: str, repository: str) -> None:
        """Remember that a manifest was fetched for ``registry/repository`` (inventory)."""
        entry = (str(digest), registry, repository)
        if entry in self._origins:
            return
        self._origins.add(entry)
        key = f"origin:{digest}"
        known = self._index.get(key)
        origins = set(known) if isinstance(known, tuple) else set()
        if (registry, repository) not in origins:
            origins.add((registry, repository))
            self._index.set(key, tuple(sorted(origins)))

    def manifests(self) -> Iterator[tuple[ManifestRecord, tuple[tuple[str, str], ...]]]:
        """Every stored manifest with the (registry, repository) pairs it was fetched for."""
        for key in list(self._index.iterkeys()):
            if not (isinstance(key, str) and key.startswith("manifest:")):
                continue
            try:
                digest = Digest.parse(key[len("manifest:") :])
            except CachesvcError:
                continue
            media_type = self._index.get(key)
            size = self.size(digest)
            if not isinstance(media_type, str) or size is None:
                continue
            origins = self._index.get(f"origin:{digest}")
            yield (
                ManifestRecord(digest, media_type, size),
                tuple(origins) if isinstance(origins, tuple) else (),
            )

    def forget_origins(self, digest: Digest) -> None:
        """Drop what ``note_origin`` remembered for a purged manifest."""
        self._index.delete(f"origin:{digest}")
        self._origins = {o for o in self._origins if o[0] != str(digest)}

    def load_pins(self) -> list[dict[str, Any]]:
        """The persisted pin list (JSON-able records; see pins.py)."""
        value = self._index.get("pins")
        return list(value) if isinstance(value, list) else []

    def save_pins(self, pins: list[dict[str, Any]]) -> None:
        """Persist the pin list (survives restarts)."""
        self._index.set("pins", pins)
