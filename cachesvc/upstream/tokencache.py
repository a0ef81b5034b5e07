"""Bearer tokens kept between requests, bounded in entries and bytes.

Tokens are keyed per (endpoint, scope, credential) and scopes follow the repository names
clients ask for, so the keys are the clients' choice: without a bound, 1,200 names with a
legal 60 KiB token each are 70 MiB held for nothing. The least recently used go first;
an expired token is dropped when met and in a sweep whenever the cache is full.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

# Tokens kept at most, and their total size: enough for every repository a node pulls
# from at once, many times over; a token fetch is one round trip when a token was dropped.
MAX_ENTRIES = 1024
MAX_BYTES = 8 * 1024 * 1024

TokenKey = tuple[str, str, str]  # (endpoint, scope, credential fingerprint or "")


@dataclass(slots=True)
class Token:
    """A Bearer token and when (monotonic) to stop using it."""

    value: str
    expires_at: float


class TokenCache:
    """An LRU of tokens bounded by ``max_entries`` and ``max_bytes`` (see the module)."""

    def __init__(self, max_entries: int = MAX_ENTRIES, max_bytes: int = MAX_BYTES) -> None:
        self._max_entries = max_entries
        self._max_bytes = max_bytes
        self._bytes = 0
        self._items: OrderedDict[TokenKey, Token] = OrderedDict()

    def __len__(self) -> int:
        return len(self._items)

    @property
    def bytes(self) -> int:
        """Total size of the tokens held."""
        return self._bytes

    def get(self, key: TokenKey, now: float) -> Token | None:
        """The unexpired token for ``key``, or None (an expired one is dropped)."""
        token = self._items.get(key)
        if token is None:
            return None
        if token.expires_at <= now:
            self.pop(key)
            return None
        self._items.move_to_end(key)
        return token

    def put(self, key: TokenKey, token: Token, now: float) -> None:
        """Keep ``token``; expired and then least recently used ones make room."""
        self.pop(key)
        size = len(token.value)
        if size > self._max_bytes:
            return
        if len(self._items) >= self._max_entries or self._bytes + size > self._max_bytes:
            for old in [k for k, t in self._items.items() if t.expires_at <= now]:
                self.pop(old)
        while self._items and (
            len(self._items) >= self._max_entries or self._bytes + size > self._max_bytes
        ):
            _, dropped = self._items.popitem(last=False)
            self._bytes -= len(dropped.value)
        self._items[key] = token
        self._bytes += size

    def pop(self, key: TokenKey) -> None:
        """Forget the token for ``key`` (if any)."""
        token = self._items.pop(key, None)
        if token is not None:
            self._bytes -= len(token.value)

    def clear(self) -> None:
        """Forget every token."""
        self._items.clear()
        self._bytes = 0
