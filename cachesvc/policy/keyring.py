"""The configured keys of one registry, re-read when their files change (key rotation).

Keys rotate with an overlap: the operator adds the new key's file (or rewrites one, or a
Secret update swaps kubelet's ``..data`` symlink), later removes the old one. At most once
per ``check_interval`` (an injected monotonic clock) every file is ``stat``-ed through its
symlinks; a change of device, inode, size or mtime re-reads them all. A file that cannot be
read or parsed then keeps the last good key set (logged), so a half-written file never
leaves a registry with no keys, or with fewer than before, mid-rollout.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path

from .keys import PublicKey, PublicKeyError, read_key_file
from .verdictcache import keyring_id

__all__ = ["Keyring"]

log = logging.getLogger("cachesvc.policy")

_Stamp = tuple[int, int, int, int] | None


def _stamp(path: Path) -> _Stamp:
    try:
        info = os.stat(path)  # follows symlinks: the ..data swap changes the inode seen here
    except OSError:
        return None
    return (info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns)


class Keyring:
    """The keys in ``paths``; :meth:`load` fails on an unusable file (startup has no
    earlier keys to fall back on)."""

    def __init__(
        self,
        paths: Sequence[Path],
        keys: tuple[PublicKey, ...],
        stamps: tuple[_Stamp, ...],
        *,
        clock: Callable[[], float],
        check_interval: float,
    ) -> None:
        self._paths = tuple(paths)
        self._keys = keys
        self._id = keyring_id(keys)
        self._stamps = stamps
        self._clock = clock
        self._interval = check_interval
        self._checked_at = clock()

    @classmethod
    def load(
        cls,
        paths: Sequence[Path],
        *,
        config_key: str,
        clock: Callable[[], float],
        check_interval: float = 1.0,
    ) -> Keyring:
        """Read every key now; ``PublicKeyError`` names ``config_key[i]`` of a bad one."""
        stamps = tuple(_stamp(p) for p in paths)
        keys = tuple(read_key_file(p, config_key=f"{config_key}[{i}]") for i, p in enumerate(paths))
        return cls(paths, keys, stamps, clock=clock, check_interval=check_interval)

    def current(self) -> tuple[tuple[PublicKey, ...], str]:
        """The keys in effect and their :func:`keyring_id` (verdicts are cached under it)."""
        now = self._clock()
        if now - self._checked_at >= self._interval:
            self._checked_at = now
            self._refresh()
        return self._keys, self._id

    def _refresh(self) -> None:
        stamps = tuple(_stamp(p) for p in self._paths)
        if stamps == self._stamps:
            return
        try:
            keys = tuple(read_key_file(p) for p in self._paths)
        except PublicKeyError as exc:
            log.warning("verify key files changed, one is unusable; keeping the last keys: %s", exc)
            return
        self._keys, self._stamps, self._id = keys, stamps, keyring_id(keys)
        log.info("verify keys re-read: %s", ", ".join(k.fingerprint for k in keys))
