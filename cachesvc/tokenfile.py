"""A file of bearer tokens, one per line, re-read when it changes (for rotation overlaps).

Used for ``admin.token_file`` (and ``cluster.token_file``): during a rotation the file holds
the new token and the old one; any line is accepted, the first is the one to send. Blank lines
and surrounding whitespace are ignored.

Re-reading is ``filewatch``'s rule (a changed device, inode, size or mtime, checked at most
once per ``check_interval``; kubelet's ``..data`` symlink swap included). A read that fails
or finds no token keeps the last good tokens and is retried at the next check: a
half-written or briefly missing file must not lock everyone out. Only regular files of bounded
size are read (``read_small_file``). Tokens are never logged.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
from collections.abc import Callable
from pathlib import Path

from cachesvc.errors import ConfigError
from cachesvc.filewatch import FileWatch
from cachesvc.smallfile import read_small_file

__all__ = ["MAX_TOKEN_FILE_BYTES", "TokenFile"]

MAX_TOKEN_FILE_BYTES = 64 * 1024
"""Room for hundreds of tokens; a larger file is a mistake, not a token list."""

log = logging.getLogger("cachesvc.tokenfile")


def _parse(data: bytes) -> tuple[bytes, ...]:
    return tuple(line.strip() for line in data.splitlines() if line.strip())


class TokenFile:
    """The tokens in ``path``; construct with :meth:`load`, which fails on an unusable file."""

    def __init__(self, path: Path, tokens: tuple[bytes, ...], watch: FileWatch) -> None:
        self.path = path
        self._tokens = tokens
        self._watch = watch

    @classmethod
    def load(
        cls,
        path: Path,
        *,
        config_key: str,
        clock: Callable[[], float],
        check_interval: float = 1.0,
    ) -> TokenFile:
        """Read ``path`` now; ``ConfigError`` (naming ``config_key``) if it is unreadable or
        holds no token, since there is no earlier value to fall back on at startup."""
        watch = FileWatch([path], clock=clock, check_interval=check_interval)
        try:
            tokens = _parse(read_small_file(path, MAX_TOKEN_FILE_BYTES))
        except OSError as exc:
            raise ConfigError(config_key, f"{path}: cannot read ({exc.strerror})") from exc
        if not tokens:
            raise ConfigError(config_key, f"{path}: holds no token")
        return cls(path, tokens, watch)

    def first(self) -> str:
        """The token to send (the file's first one)."""
        self._refresh()
        return self._tokens[0].decode(errors="replace")

    def accepts(self, token: str | bytes) -> bool:
        """Whether ``token`` equals any line, in time independent of which one or how close.

        Both sides are hashed first so lengths leak nothing, and every line is compared.
        """
        self._refresh()
        offered = token.encode() if isinstance(token, str) else token
        if not offered:
            return False
        digest = hashlib.sha256(offered).digest()
        found = False
        for line in self._tokens:
            found |= hmac.compare_digest(digest, hashlib.sha256(line).digest())
        return found

    def _refresh(self) -> None:
        stamps = self._watch.changed()
        if stamps is None:
            return
        try:
            tokens = _parse(read_small_file(self.path, MAX_TOKEN_FILE_BYTES))
        except OSError as exc:
            log.warning("token file %s unreadable, keeping the last tokens: %s", self.path, exc)
            return
        if not tokens:
            log.warning("token file %s holds no token, keeping the last tokens", self.path)
            return
        self._tokens = tokens
        self._watch.accept(stamps)
        log.info("token file %s re-read: %d tokens", self.path, len(tokens))
