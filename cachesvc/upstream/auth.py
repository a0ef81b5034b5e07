"""Registry authentication: WWW-Authenticate challenges, Basic and Bearer, a token cache.

Docker Hub, ghcr.io and quay.io answer even anonymous pulls with
``401 WWW-Authenticate: Bearer realm=...,service=...,scope=...``. The client asks
the realm for a token for the scope and retries. With credentials (``credentials.py``)
the token request carries ``Authorization: Basic``; an ``identitytoken`` is an OAuth2
refresh token, POSTed to the realm per the distribution token spec. Registries that
answer ``WWW-Authenticate: Basic`` (htpasswd) get the credentials directly, and are
remembered so later requests skip the 401 round trip.

Tokens are cached per (endpoint, scope, credential) until shortly before they expire;
concurrent requests for the same key share one token fetch; a change of the
credentials file drops the registry's tokens. Nothing here logs or raises a secret.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import math
import re
import ssl
from dataclasses import dataclass
from urllib.parse import urlsplit

import aiohttp
from yarl import URL

from cachesvc.clock import SYSTEM_CLOCK, Clock
from cachesvc.errors import (
    UpstreamError,
    UpstreamRateLimited,
    UpstreamTimeout,
    UpstreamUnauthorized,
    UpstreamUnreachable,
)
from cachesvc.metrics import Metrics
from cachesvc.upstream.credentials import Credential, Credentials
from cachesvc.upstream.egress import (
    CONNECT_DIRECTLY,
    PROXY_AUTH_HINT,
    PROXY_AUTH_REQUIRED,
    Egress,
    connection_failure,
)

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


_TokenKey = tuple[str, str, str]  # (endpoint, scope, credential fingerprint or "")


def _loopback(url: str) -> bool:
    host = urlsplit(url).hostname or ""
    try:
        return host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def refused_hint(registry: str, credential: Credential | None) -> str:
    """The operator-facing half of a 401/403 message: whose credentials are at fault."""
    if credential is None:
        return (
            f"cachesvc has no credentials for {registry} (add them to its credentials_file); "
            "the cluster's pull secret does not reach the mirror"
        )
    return (
        f"cachesvc's own credentials for {registry} (user {credential.username or '?'!r} in "
        "its credentials_file) are wrong, expired or lack access: has the secret expired "
        "or been rotated without updating the file?"
    )


class Authorizer:
    """Authorization for one registry's upstream requests (see the module docstring)."""

    def __init__(
        self,
        registry: str,
        session: aiohttp.ClientSession,
        credentials: Credentials,
        metrics: Metrics,
        *,
        timeout: float,
        ssl_context: ssl.SSLContext | bool = True,
        insecure: bool = False,
        egress: Egress = CONNECT_DIRECTLY,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        self.registry = registry
        self._session = session
        self._credentials = credentials
        self._metrics = metrics
        self._timeout = timeout
        self._ssl = ssl_context
        self._insecure = insecure
        self._egress = egress
        self._clock = clock
        self._tokens: dict[_TokenKey, _Token] = {}
        self._inflight: dict[_TokenKey, asyncio.Task[_Token]] = {}
        self._basic: set[str] = set()  # endpoints that challenged with Basic
        credentials.on_change(self._credentials_changed)

    def credential(self, endpoint: str) -> Credential | None:
        """The credentials to use at ``endpoint`` (None: anonymous)."""
        return self._credentials.lookup(self.registry, urlsplit(endpoint).netloc)

    def header(self, endpoint: str, scope: str) -> str | None:
        """An ``Authorization`` value known to work, without a round trip; or None."""
        credential = self.credential(endpoint)
        if endpoint in self._basic and credential is not None and credential.password:
            return credential.basic()
        token = self._tokens.get(self._key(endpoint, scope, credential))
        if token is not None and token.expires_at > self._clock.monotonic():
            return f"Bearer {token.value}"
        return None

    def forget(self) -> None:
        """Drop every cached token (the credentials changed)."""
        self._tokens.clear()

    def _credentials_changed(self, changed: set[str]) -> None:
        if changed:
            self.forget()

    @staticmethod
    def _key(endpoint: str, scope: str, credential: Credential | None) -> _TokenKey:
        return endpoint, scope, credential.fingerprint if credential is not None else ""

    async def answer(self, endpoint: str, challenge: Challenge | None, scope: str) -> str:
        """Answer a 401 challenge; returns the ``Authorization`` value for the retry."""
        credential = self.credential(endpoint)
        if challenge is not None and challenge.scheme == "basic":
            if credential is None or not credential.password:
                raise UpstreamUnauthorized(
                    f"{self.registry} refused the mirror (401, Basic auth required): "
                    + refused_hint(self.registry, None)
                )
            self._basic.add(endpoint)
            return credential.basic()
        if challenge is None or challenge.scheme != "bearer":
            raise UpstreamUnauthorized(
                f"{self.registry} refused the mirror (401) with no challenge cachesvc can "
                f"answer: {refused_hint(self.registry, credential)}"
            )
        self._basic.discard(endpoint)
        key = self._key(endpoint, scope, credential)
        self._tokens.pop(key, None)
        task = self._inflight.get(key)
        if task is None:
            task = asyncio.get_running_loop().create_task(self._fetch(challenge, scope, credential))
            self._inflight[key] = task
            task.add_done_callback(lambda _t: self._inflight.pop(key, None))
        token = await asyncio.shield(task)
        self._tokens[key] = token
        return f"Bearer {token.value}"

    async def _fetch(
        self, challenge: Challenge, scope: str, credential: Credential | None
    ) -> _Token:
        registry = self.registry
        realm = challenge.params.get("realm")
        if not realm or not realm.startswith(("https://", "http://")):
            raise UpstreamUnauthorized(
                f"{registry} sent a Bearer challenge without a usable realm; cannot get a token"
            )
        if (
            credential is not None
            and realm.startswith("http://")
            and not (self._insecure or _loopback(realm))
        ):
            raise UpstreamUnauthorized(
                f"the token service of {registry} is plain http; cachesvc will not send "
                "credentials over it (set 'insecure: true' on the registry to allow it)"
            )
        params = {"scope": challenge.params.get("scope") or scope}
        if "service" in challenge.params:
            params["service"] = challenge.params["service"]
        status, body = await self._ask(realm, params, credential)
        return self._token(status, body, credential)

    async def _ask(
        self, realm: str, params: dict[str, str], credential: Credential | None
    ) -> tuple[int, bytes]:
        """One token request to ``realm``: (status, body); transport errors translated."""
        registry = self.registry
        try:
            async with asyncio.timeout(self._timeout):
                form: dict[str, str] | None = None
                query: dict[str, str] | None = params
                given: dict[str, str] = {}
                if credential is not None and credential.identity_token:
                    # OAuth2: the identity token in a form, nothing in the query.
                    form = {
                        **params,
                        "grant_type": "refresh_token",
                        "refresh_token": credential.identity_token,
                        "client_id": "cachesvc",
                    }
                    query = None
                elif credential is not None:
                    given = {"Authorization": credential.basic()}
                proxy, proxy_headers, headers = self._egress.route(URL(realm), given)
                async with self._session.request(
                    "GET" if form is None else "POST",
                    realm,
                    data=form,
                    params=query,
                    headers=headers,
                    ssl=self._ssl,
                    proxy=proxy,
                    proxy_headers=proxy_headers,
                ) as resp:
                    body = await resp.read()
                    status = resp.status
        except TimeoutError:
            self._metrics.token_fetches.labels(registry, "error").inc()
            raise UpstreamTimeout(f"token service of {registry} did not answer in time") from None
        except aiohttp.ClientError as exc:
            self._metrics.token_fetches.labels(registry, "error").inc()
            raise UpstreamError(
                f"token service of {registry} unreachable: {connection_failure(exc)}"
            ) from None
        return status, body

    def _token(self, status: int, body: bytes, credential: Credential | None) -> _Token:
        """The token service's answer as a token, or the error it amounts to."""
        registry = self.registry
        if status != 200:
            self._metrics.token_fetches.labels(registry, "error").inc()
            if status in (401, 403):
                self._metrics.upstream_auth_failures.labels(registry, str(status)).inc()
                raise UpstreamUnauthorized(
                    f"the token service of {registry} refused the mirror ({status}): "
                    + refused_hint(registry, credential)
                )
            if status == 429:
                raise UpstreamRateLimited(f"the token service of {registry} answered 429")
            if status == PROXY_AUTH_REQUIRED:
                raise UpstreamUnreachable(f"the token service of {registry}: {PROXY_AUTH_HINT}")
            raise UpstreamUnreachable(f"the token service of {registry} answered {status}")
        try:
            data = json.loads(body)
            value = data.get("token") or data.get("access_token")
            expires_in = float(data.get("expires_in") or DEFAULT_EXPIRES_IN)
            if not math.isfinite(expires_in) or expires_in <= 0:
                expires_in = DEFAULT_EXPIRES_IN  # NaN/inf/negative: the spec's default
        except (ValueError, AttributeError, TypeError):
            value, expires_in = None, 0.0
        if not isinstance(value, str) or not value:
            self._metrics.token_fetches.labels(registry, "error").inc()
            raise UpstreamUnauthorized(f"token service of {registry} returned no token")
        self._metrics.token_fetches.labels(registry, "ok").inc()
        lifetime = (
            max(1.0, expires_in - EXPIRY_MARGIN) if expires_in > 2 * EXPIRY_MARGIN else expires_in
        )
        return _Token(value, self._clock.monotonic() + lifetime)
