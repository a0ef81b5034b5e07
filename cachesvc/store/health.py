"""Storage trouble as the request path met it: for ``/readyz`` and the metrics.

A full or failing disk must not look like a healthy node: the request that met the
error answers with a clear OCI error (or serves bytes it already holds without
caching them), and records the error here. ``trouble`` is what ``/readyz`` reports:
the last write error until a later write succeeds (or, once the filesystem has free
space again, ``RECOVERY_SECONDS`` after it), and a filesystem with no free space at
all even before any write failed.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

RECOVERY_SECONDS = 30.0


class StorageHealth:
    """The last storage error on the request path, and whether it still stands."""

    def __init__(self, root: Path, on_error: Callable[[str], None] | None = None) -> None:
        """``on_error(op)`` is told of every error (the metric); ``op`` is read or write."""
        self._root = root
        self._on_error = on_error
        self._lock = threading.Lock()  # writes fail in worker threads
        self._last: str | None = None
        self._at = 0.0

    def failed(self, op: str, error: OSError) -> None:
        """A store operation failed with ``error``; ``op`` is ``read`` or ``write``."""
        with self._lock:
            self._last = f"storage {op} error: {error.strerror or error}"
            self._at = time.monotonic()
        if self._on_error is not None:
            self._on_error(op)

    def wrote(self) -> None:
        """A write committed: the disk takes data again."""
        if self._last is not None:
            with self._lock:
                self._last = None

    def trouble(self) -> str | None:
        """Why the storage is not fit to serve from, or None when it is."""
        try:
            info = os.statvfs(self._root)
        except OSError as exc:
            return f"storage root {self._root} cannot be examined: {exc.strerror or exc}"
        if info.f_bavail == 0:
            return f"storage full: no free space left on the filesystem of {self._root}"
        with self._lock:
            if self._last is not None and time.monotonic() - self._at > RECOVERY_SECONDS:
                self._last = None  # free space again and no new error since
            return self._last
