"""The configured keys of one registry, re-read when their files change (key rotation).

Keys rotate with an overlap: the operator adds the new key's file (or rewrites one, or a
Secret update swaps kubelet's ``..data`` symlink), later removes the old one. A change is
``filewatch``'s rule (device, inode, size or mtime through the symlinks, checked at most
once per ``check_interval``), which re-reads them all. A file that cannot be
read or parsed then keeps the last good key set (logged), so a half-written file never
leaves a registry with no keys, or with fewer than before, mid-rollout.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path

from cachesvc.filewatch import FileWatch, Stamps

from .keys import PublicKey, PublicKeyError, read_key_file
from .verdictcache import keyring_id

__all__ = ["Keyring"]

log = logging.getLogger("cachesvc.policy")


class Keyring:
    """The keys in ``paths``; :meth:`load` fails on an unusable file (startup has no
    earlier keys to fall back on)."""

    def __init__(self, keys: tuple[PublicKey, ...], watch: FileWatch) -> None:
        self._keys = keys
        self._id = keyring_id(keys)
        self._watch = watch

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
        watch = FileWatch(paths, clock=clock, check_interval=check_interval)
        keys = tuple(read_key_file(p, config_key=f"{config_key}[{i}]") for i, p in enumerate(paths))
        return cls(keys, watch)

    def current(self) -> tuple[tuple[PublicKey, ...], str]:
        """The keys in effect and their :func:`keyring_id` (verdicts are cached under it)."""
        stamps = self._watch.changed()
        if stamps is not None:
            self._refresh(stamps)
        return self._keys, self._id

    def _refresh(self, stamps: Stamps) -> None:
        try:
            keys = tuple(read_key_file(p) for p in self._watch.paths)
        except PublicKeyError as exc:
            log.warning("verify key files changed, one is unusable; keeping the last keys: %s", exc)
            return
        self._keys, self._id = keys, keyring_id(keys)
        self._watch.accept(stamps)
        log.info("verify keys re-read: %s", ", ".join(k.fingerprint for k in keys))
