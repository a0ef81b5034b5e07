"""Verified blob files on the node's disk: the only module that knows the layout.

::

    <root>/
      blobs/<algorithm>/<first two hex>/<hex>   verified content: layers, configs, manifests
      tmp/<hex>.<random>                        ingests in progress; all removed at start-up
      index/                                    diskcache (``cachesvc.store.index``): media
                                                types, tags, origins, access times, pins

A file under ``blobs/`` is always complete and its name is its digest: it gets there
only by ``commit``, an atomic rename of a temp file whose digest was checked and that
was fsynced by its writer (``cachesvc.store.ingest``); the directory is fsynced after
the rename. Paths are built only from a parsed ``Digest``, so nothing a client sends
can name a file outside the root.

``usage_bytes``/``usage_entries`` (what ``blobs/`` holds) are counted once at start-up
and kept current by ``commit`` and ``remove``, so metrics and eviction never walk the
disk to know how full the store is.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path

from cachesvc.errors import CachesvcError, DigestMismatch
from cachesvc.oci import Digest


class Content:
    """The files under ``blobs/`` and ``tmp/``, and how many bytes they hold."""

    def __init__(self, root: Path) -> None:
        """Create the layout; removes every temp file a previous run left (``OSError``)."""
        self.blob_root = root / "blobs"
        self.tmp_root = root / "tmp"
        for directory in (self.blob_root, self.tmp_root):
            directory.mkdir(parents=True, exist_ok=True)
        self.removed_temp_files = self._clean_tmp()
        self._usage_lock = threading.Lock()  # commits run in worker threads
        self.usage_bytes, self.usage_entries = self._scan_usage()

    def path(self, digest: Digest) -> Path:
        """Where the verified content of ``digest`` lives (it may not exist)."""
        return blob_path(self.blob_root, digest)

    def size(self, digest: Digest) -> int | None:
        """The size of a stored blob, or None when it is not stored."""
        try:
            return self.path(digest).stat().st_size
        except FileNotFoundError:
            return None

    def new_temp(self, digest: Digest) -> Path:
        """A fresh temp path for an ingest of ``digest`` (open it with ``O_EXCL``)."""
        return self.tmp_root / f"{digest.hex}.{secrets.token_hex(6)}"

    def commit(self, temp: Path, digest: Digest) -> Path:
        """Rename a verified, fsynced temp file into place; accounts its size.

        Atomic (``rename``), then the directory is fsynced so the name survives a crash.
        """
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
        return final

    def put(self, digest: Digest, body: bytes) -> None:
        """Store small verified-in-memory content (a manifest): temp, fsync, commit.

        Blocking: call it from a worker thread. Refuses bytes that do not match
        ``digest`` (``DigestMismatch``) and keeps nothing then.
        """
        if Digest.of(body, digest.algorithm) != digest:
            raise DigestMismatch(f"bytes for {digest} do not match it; nothing was kept")
        if self.size(digest) == len(body):
            return  # already stored: content-addressed, so the same bytes
        temp = self.new_temp(digest)
        try:
            with open(temp, "xb") as f:
                f.write(body)
                f.flush()
                os.fsync(f.fileno())
            self.commit(temp, digest)
        finally:
            discard(temp)

    def remove(self, digest: Digest) -> bool:
        """Delete a stored blob's file; True when it existed."""
        size = self.size(digest)
        try:
            os.unlink(self.path(digest))
        except FileNotFoundError:
            return False
        self._account(-(size or 0), -1)
        return True

    def files(self) -> Iterator[tuple[Digest, int, float]]:
        """Every stored blob as (digest, size, mtime) (walks the disk)."""
        return stored_files(self.blob_root)

    def _account(self, delta_bytes: int, delta_entries: int) -> None:
        with self._usage_lock:
            self.usage_bytes += delta_bytes
            self.usage_entries += delta_entries

    def _scan_usage(self) -> tuple[int, int]:
        total = count = 0
        for directory, _, files in os.walk(self.blob_root):
            for name in files:
                with contextlib.suppress(OSError):
                    total += os.stat(os.path.join(directory, name)).st_size
                    count += 1
        return total, count

    def _clean_tmp(self) -> int:
        removed = 0
        for entry in os.scandir(self.tmp_root):
            if entry.is_dir(follow_symlinks=False):
                shutil.rmtree(entry.path, ignore_errors=True)
            else:
                discard(Path(entry.path))
            removed += 1
        return removed


def stored_files(blob_root: Path) -> Iterator[tuple[Digest, int, float]]:
    """Every file under ``blob_root`` named by a digest, as (digest, size, mtime).

    A function of the layout alone (no ``Content``, which cleans ``tmp/`` when it
    opens), so ``cachesvc verify`` can walk a store a running daemon is using.
    """
    for algorithm_dir in os.scandir(blob_root):
        if not algorithm_dir.is_dir():
            continue
        for prefix in os.scandir(algorithm_dir.path):
            if not prefix.is_dir():
                continue
            for entry in os.scandir(prefix.path):
                try:
                    digest = Digest.parse(f"{algorithm_dir.name}:{entry.name}")
                    info = entry.stat()
                except (CachesvcError, OSError):  # a foreign file is not ours to list
                    continue
                yield digest, info.st_size, info.st_mtime


def blob_path(blob_root: Path, digest: Digest) -> Path:
    """Where the content of ``digest`` lives under ``blob_root`` (the layout, drawn above)."""
    return blob_root / digest.algorithm / digest.hex[:2] / digest.hex


def discard(temp: Path) -> None:
    """Remove a temp file if it is still there (a failed or committed ingest)."""
    with contextlib.suppress(FileNotFoundError):
        os.unlink(temp)
