"""Noticing that operator-supplied files changed, cheaply and through kubelet's symlinks.

Token files and verify-key files are rotated in place, by an atomic rename, or by kubelet's
Secret update, which swaps the ``..data`` symlink to a new timestamped directory while the
path itself never changes. At most once per ``check_interval`` (an injected monotonic clock)
every file is ``stat``-ed through its symlinks; a change of device, inode, size or mtime is a
change. The owner re-reads on a change and calls :meth:`FileWatch.accept` only when the read
was good, so a half-written file is looked at again at the next check while the last good
value stays in effect.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path

__all__ = ["FileWatch", "Stamps"]

_Stamp = tuple[int, int, int, int] | None
Stamps = tuple[_Stamp, ...]
"""One stamp per watched file; ``None`` for a file that could not be ``stat``-ed."""


def _stamp(path: Path) -> _Stamp:
    try:
        info = os.stat(path)  # follows symlinks: the ..data swap changes the inode seen here
    except OSError:
        return None
    return (info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns)


class FileWatch:
    """The files at ``paths`` as last accepted; constructing it stamps them now (before
    the owner's first read, so a change during that read is seen at the next check)."""

    def __init__(
        self, paths: Sequence[Path], *, clock: Callable[[], float], check_interval: float
    ) -> None:
        self.paths = tuple(paths)
        self._stamps = self.stamps()
        self._clock = clock
        self._interval = check_interval
        self._checked_at = clock()

    def stamps(self) -> Stamps:
        """The files' stamps as they are now."""
        return tuple(_stamp(p) for p in self.paths)

    def changed(self) -> Stamps | None:
        """The new stamps if a check is due and a file changed since the last accepted
        ones; otherwise ``None`` (nothing to re-read)."""
        now = self._clock()
        if now - self._checked_at < self._interval:
            return None
        self._checked_at = now
        stamps = self.stamps()
        return None if stamps == self._stamps else stamps

    def accept(self, stamps: Stamps) -> None:
        """The owner read the files as of ``stamps`` successfully."""
        self._stamps = stamps
