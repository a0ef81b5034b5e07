"""Registry authentication: WWW-Authenticate challenges and a Bearer token cache.

Docker Hub, ghcr.io and quay.io answer even anonymous pulls with
``401 WWW-Authenticate: Bearer realm=...,service=...,scope=...``. The client asks
the realm for a token for the scope and retries. Tokens are cached per
(registry, scope) until shortly before they expire, and concurrent requests for the
same scope share one token fetch.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from dataclasses import dataclass

import aiohttp

from cachesvc.errors import UpstreamError, UpstreamTimeout, UpstreamUnauthorized
from cachesvc.metrics import Metrics

# Refresh a token this long before upstream says it expires.
EXPIRY_MARGIN = 10.0
# Per the token spec, a token without expires_in lives 60 seconds.
DEFAULT_EXPIRES_IN = 60.0
_PARAM_RE = re.compile(r'([a-zA-Z_][a-zA-Z0-9_-]*)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^\s,]+))')


@dataclass(frozen=True, slots=True)
class Challenge:
    """A parsed ``WWW-Authenticate`` header."""

    scheme: str  # "bearer" or "basic", lowercased
    params: dict[str, str]


def parse_challenge(header: str) -> Challenge | None:
    """Parse ``Bearer realm="...",service="...",scope="..."`` (or ``Basic realm=...``)."""
    scheme, _, rest = header.strip().partition(" ")
    if not scheme:
        return None
    params = {m.group(1).lower(): m.group(2) if m.group(2) is not None else m.group(3)
              for m in _PARAM_RE.finditer(rest)}  # fmt: skip
    return Challenge(scheme.lower(), params)


@dataclass(slots=True)
class _Token:
    value: str
    expires_at: float


class TokenCache:
    """Bearer tokens per (registry, scope), with single-flight fetches."""

    def __init__(self, session: aiohttp.ClientSession, metrics: Metrics, *, timeout: float) -> None:
        self._session = session
        self._metrics = metrics
        self._timeout = timeout
        self._tokens: dict[tuple[str, str], _Token] = {}
        self._inflight: dict[tuple[str, str], asyncio.Task[_Token]] = {}

    def cached(self, registry: str, scope: str) -> str | None:
        """A still-valid token for the scope, or None."""
        token = self._tokens.get((registry, scope))
        if token is not None and token.expires_at > time.monotonic():
            return token.value
        return None

    def forget(self, registry: str) -> None:
        """Drop every token of a registry (credentials changed)."""
        for key in [k for k in self._tokens if k[0] == registry]:
            del self._tokens[key]

    async def fetch(self, registry: str, challenge: Challenge, scope: str) -> str:
        """Run the token flow for ``challenge``; concurrent callers share one request."""
        key = (registry, scope)
        self._tokens.pop(key, None)
        task = self._inflight.get(key)
        if task is None:
            task = asyncio.get_running_loop().create_task(self._fetch(registry, challenge, scope))
            self._inflight[key] = task
            task.add_done_callback(lambda _t: self._inflight.pop(key, None))
        token = await asyncio.shield(task)
        self._tokens[key] = token
        return token.value

    async def _fetch(self, registry: str, challenge: Challenge, scope: str) -> _Token:
        realm = challenge.params.get("realm")
        if not realm or not realm.startswith(("https://", "http://")):
            raise UpstreamUnauthorized(
                f"{registry} sent a Bearer challenge without a usable realm; cannot get a token"
            )
        params = {"scope": challenge.params.get("scope") or scope}
        if "service" in challenge.params:
            params["service"] = challenge.params["service"]
        try:
            async with (
                asyncio.timeout(self._timeout),
                self._session.get(realm, params=params) as resp,
            ):
                body = await resp.read()
                if resp.status != 200:
                    self._metrics.token_fetches.labels(registry, "error").inc()
                    raise UpstreamUnauthorized(
                        f"token service of {registry} answered {resp.status}: the mirror could "
                        "not get a pull token (check cachesvc's credentials for this registry)"
                    )
        except TimeoutError:
            self._metrics.token_fetches.labels(registry, "error").inc()
            raise UpstreamTimeout(f"token service of {registry} did not answer in time") from None
        except aiohttp.ClientError as exc:
            self._metrics.token_fetches.labels(registry, "error").inc()
            raise UpstreamError(f"token service of {registry} unreachable: {exc}") from None
        try:
            data = json.loads(body)
            value = data.get("token") or data.get("access_token")
            expires_in = float(data.get("expires_in") or DEFAULT_EXPIRES_IN)
        except (ValueError, AttributeError, TypeError):
            value, expires_in = None, 0.0
        if not isinstance(value, str) or not value:
            self._metrics.token_fetches.labels(registry, "error").inc()
            raise UpstreamUnauthorized(f"token service of {registry} returned no token")
        self._metrics.token_fetches.labels(registry, "ok").inc()
        lifetime = (
            max(1.0, expires_in - EXPIRY_MARGIN) if expires_in > 2 * EXPIRY_MARGIN else expires_in
        )
        return _Token(value, time.monotonic() + lifetime)
