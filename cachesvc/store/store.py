"""The store: verified files (``content``) plus what is known about them (``index``).

``cachesvc.store.content`` draws the disk layout and owns the files and their usage;
``cachesvc.store.index`` owns the diskcache (media types, tags, origins, access
times, pins). This class composes the two where an operation needs both: writing a
blob (``ingest``, ``put_manifest``), reading a manifest, removing a blob, listing
blobs with their last access. Everything index-only is ``store.index``.

Sizes come from ``stat`` and last access from the index, so size-bounded LRU
eviction, age limits and pinning can walk ``entries`` without a new layout.
"""

from __future__ import annotations

import contextlib
import logging
import sqlite3
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from cachesvc.errors import StoreError
from cachesvc.metrics import Metrics
from cachesvc.oci import Digest
from cachesvc.store.content import Content
from cachesvc.store.health import StorageHealth
from cachesvc.store.index import ACCESS_FLUSH_SECONDS, Index, TagRecord
from cachesvc.store.ingest import Ingest
from cachesvc.store.rebuild import index_present, rebuild, set_aside
from cachesvc.store.verification import Damage, Verified

log = logging.getLogger("cachesvc.store")

__all__ = ["ACCESS_FLUSH_SECONDS", "BlobEntry", "ManifestRecord", "Store", "TagRecord"]


@dataclass(frozen=True, slots=True)
class ManifestRecord:
    """A manifest the store holds: its exact bytes live in the blob file."""

    digest: Digest
    media_type: str
    size: int


@dataclass(frozen=True, slots=True)
class BlobEntry:
    """One stored blob as eviction and inventory see it."""

    digest: Digest
    size: int
    last_access: float


class Store:
    """Blobs, manifests and tag mappings under one storage root."""

    def __init__(self, root: Path, metrics: Metrics | None = None) -> None:
        """Open (creating) the layout and the index; ``StoreError`` if the root is unusable.

        ``metrics`` (optional: tools and tests open stores without) counts damage
        found and storage errors met.
        """
        self.root = root
        self._metrics = metrics
        self.verified = Verified()  # what this process checked or wrote itself
        count = metrics.storage_errors.labels if metrics is not None else None
        self.health = StorageHealth(root, (lambda op: count(op).inc()) if count else None)
        try:
            self.content = Content(root)
            self.index = self._open_index(root / "index")
        except OSError as exc:
            raise StoreError(f"cannot use storage root {root}: {exc.strerror or exc}") from None

    def _open_index(self, directory: Path) -> Index:
        """Open the index; one that is missing or damaged is rebuilt from the files."""
        existed = index_present(directory)
        try:
            index = Index(directory)
        except sqlite3.DatabaseError as exc:
            set_aside(directory, str(exc))
            index, existed = Index(directory), False
            why = f"was damaged ({exc})"
        else:
            why = "was missing"
        if not existed and self.content.usage_entries:
            rebuild(self.content, index, why)
        return index

    @property
    def tmp_root(self) -> Path:
        """Where ingests in progress live."""
        return self.content.tmp_root

    @property
    def removed_temp_files(self) -> int:
        """Temp files a previous run left behind, removed at start-up."""
        return self.content.removed_temp_files

    @property
    def usage_bytes(self) -> int:
        """Bytes of verified blobs (kept current by commits and removals)."""
        return self.content.usage_bytes

    @property
    def usage_entries(self) -> int:
        """Verified blobs stored."""
        return self.content.usage_entries

    def close(self) -> None:
        """Flush access times and close the index."""
        self.index.close()

    # -- blobs ---------------------------------------------------------------------

    def path(self, digest: Digest) -> Path:
        """Where the verified content of ``digest`` lives (it may not exist)."""
        return self.content.path(digest)

    def size(self, digest: Digest) -> int | None:
        """The size of a stored blob, or None when it is not stored."""
        return self.content.size(digest)

    def touch(self, digest: Digest) -> None:
        """Note an access (in memory; flushed to the index in batches)."""
        self.index.touch(digest)

    def ingest(self, digest: Digest, on_written: Callable[[int], None] | None = None) -> Ingest:
        """A new writer for ``digest``: ``feed``, then ``commit()`` or ``cancel()``."""
        return Ingest(self.content, digest, on_written=on_written, on_commit=self._committed)

    def _committed(self, digest: Digest) -> None:
        self.verified.add(digest)  # an ingest checks the digest before its commit
        self.health.wrote()
        self.touch(digest)

    def remove(self, digest: Digest) -> bool:
        """Delete a stored blob and its index entries; True when it existed.

        Callers decide first whether it may go (``cachesvc.store.retention``).
        """
        self.verified.discard(digest)
        self.index.forget(digest)
        return self.content.remove(digest)

    def drop_damaged(self, damage: Damage, found_by: str) -> None:
        """Remove a file that does not hold its digest's bytes; the next request refetches.

        Logged as what it is (a digest mismatch or a read error), counted by who found
        it (``serve``, ``scrub``, ``verify``). Pins do not keep it: its bytes are wrong.
        """
        log.error(
            "stored %s is damaged (%s: %s); removed, it will be fetched again",
            damage.digest, damage.reason, damage.detail,
            extra={"fields": {"event": "damaged", "digest": str(damage.digest),
                              "reason": damage.reason, "found_by": found_by}},
        )  # fmt: skip
        if self._metrics is not None:
            self._metrics.store_damaged.labels(damage.reason, found_by).inc()
        if damage.reason == "read_error":
            self.health.failed("read", OSError(5, damage.detail))
        self.verified.discard(damage.digest)
        with contextlib.suppress(OSError):  # an unreadable file may not unlink either
            self.index.forget(damage.digest)
        with contextlib.suppress(OSError):
            self.content.remove(damage.digest)

    def last_access(self, digest: Digest) -> float:
        """Coarse last access time (falls back to the file's mtime)."""
        noted = self.index.last_access(digest)
        if noted is not None:
            return noted
        try:
            return self.path(digest).stat().st_mtime
        except OSError:  # gone, or its metadata unreadable (EIO): no known access
            return 0.0

    def entries(self) -> Iterator[BlobEntry]:
        """Every stored blob with its size and last access (walks the disk: a thread)."""
        for digest, size, mtime in self.content.files():
            noted = self.index.last_access(digest)
            yield BlobEntry(digest, size, noted if noted is not None else mtime)

    def flush_access(self) -> None:
        """Write batched last-access times (blocking: a worker thread)."""
        self.index.flush()

    # -- manifests -------------------------------------------------------------------

    def put_manifest(
        self,
        digest: Digest,
        media_type: str,
        body: bytes,
        origin: tuple[str, str] | None = None,
    ) -> ManifestRecord:
        """Store verified manifest bytes with their media type (and where they came from).

        Blocking (write, fsync, rename, SQLite): async code runs it in a worker thread.
        """
        self.content.put(digest, body)
        self.verified.add(digest)
        self.health.wrote()
        self.touch(digest)
        self.index.set_media_type(digest, media_type)
        if origin is not None:
            self.index.note_origin(digest, *origin)
        return ManifestRecord(digest, media_type, len(body))

    def get_manifest(self, digest: Digest) -> tuple[ManifestRecord, bytes] | None:
        """A stored manifest and its exact bytes, or None (also when it is damaged).

        Bytes this process has not verified are hashed first: a file replaced under
        its own name, or one the disk cannot read, is dropped (``drop_damaged``), so
        the caller fetches it again instead of serving it.
        """
        media_type = self.index.media_type(digest)
        if media_type is None:
            return None
        try:
            body = self.path(digest).read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            self.drop_damaged(Damage(digest, "read_error", exc.strerror or str(exc)), "serve")
            return None
        if digest not in self.verified:
            actual = Digest.of(body, digest.algorithm)
            if actual != digest:
                damage = Damage(digest, "mismatch", f"the bytes hash to {actual}")
                self.drop_damaged(damage, "serve")
                return None
            self.verified.add(digest)
        self.touch(digest)
        return ManifestRecord(digest, media_type, len(body)), body

    def manifests(self) -> Iterator[tuple[ManifestRecord, tuple[tuple[str, str], ...]]]:
        """Every stored manifest with the (registry, repository) pairs it was fetched for."""
        for digest, media_type in self.index.manifest_digests():
            try:
                size = self.size(digest)
            except OSError:  # unreadable metadata (EIO): not listed, not a 500
                continue
            if size is not None:
                yield ManifestRecord(digest, media_type, size), self.index.origins(digest)
