"""Registry authentication: WWW-Authenticate challenges, Basic and Bearer, a token cache.

Docker Hub, ghcr.io and quay.io answer even anonymous pulls with
``401 WWW-Authenticate: Bearer realm=...,service=...,scope=...``. The client asks
the realm for a token for the scope and retries. With credentials (``credentials.py``)
the token request carries ``Authorization: Basic``; an ``identitytoken`` is an OAuth2
refresh token, POSTed to the realm per the distribution token spec. Registries that
answer ``WWW-Authenticate: Basic`` (htpasswd) get the credentials directly, and are
remembered so later requests skip the 401 round trip.

Tokens are cached per (endpoint, scope, credential) until shortly before they expire,
in a cache bounded in entries and bytes (``tokencache``); concurrent requests for the
same key share one token fetch; a change of the credentials file drops the registry's
tokens. Nothing here logs or raises a secret.

Whose credentials go where (containerd keys them per host): an endpoint whose host has
its own ``auths`` entry gets that; the registry name's entry goes only to the registry's
last endpoint (its origin: endpoints are CDN first, origin last) and to endpoints marked
``credentials: true``; any other endpoint (a CDN) is anonymous, and so is its token
service. A token answer is read to at most ``MAX_TOKEN_ANSWER`` bytes within the token
deadline, a token over ``MAX_TOKEN`` is refused, and token requests follow redirects
under the registry rules (``redirect``, ``addresses``) but never take credentials to
another host: a redirected credentialed request to another origin is refused.
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
from cachesvc.config import RegistryConfig
from cachesvc.errors import (
    ManifestInvalid,
    UpstreamError,
    UpstreamRateLimited,
    UpstreamTimeout,
    UpstreamUnauthorized,
    UpstreamUnreachable,
)
from cachesvc.metrics import Metrics
from cachesvc.upstream import addresses, redirect
from cachesvc.upstream.body import read_whole
from cachesvc.upstream.credentials import Credential, Credentials
from cachesvc.upstream.egress import (
    CONNECT_DIRECTLY,
    PROXY_AUTH_HINT,
    PROXY_AUTH_REQUIRED,
    Egress,
    connection_failure,
)
from cachesvc.upstream.tokencache import Token, TokenCache, TokenKey

# Refresh a token this long before upstream says it expires.
EXPIRY_MARGIN = 10.0
# Per the token spec, a token without expires_in lives 60 seconds.
DEFAULT_EXPIRES_IN = 60.0
# A token service's answer is read to at most this; a token longer than MAX_TOKEN is refused
# (real ones are a few KiB; an aiohttp request header line must fit it too).
MAX_TOKEN_ANSWER = 1024 * 1024
MAX_TOKEN = 64 * 1024
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


def _loopback(url: str) -> bool:
    host = urlsplit(url).hostname or ""
    try:
        return host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def entitled_endpoints(config: RegistryConfig) -> frozenset[str]:
    """The endpoints that get the credentials stored under the registry's name: the last
    (the origin) and those marked ``credentials: true``."""
    chosen = {config.endpoints[i] for i in config.credential_endpoints}
    return frozenset({*config.endpoints[-1:], *chosen})


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
        entitled: frozenset[str] = frozenset(),
        trusted: frozenset[str] = frozenset(),
        redirect_private: bool = False,
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
        self._entitled = entitled  # endpoints that get the registry name's credentials
        self._trusted = trusted  # hosts exempt from the address rule (addresses.py)
        self._redirect_private = redirect_private
        self._tokens = TokenCache()
        self._inflight: dict[TokenKey, asyncio.Task[Token]] = {}
        self._basic: set[str] = set()  # endpoints that challenged with Basic
        credentials.on_change(self._credentials_changed)

    def credential(self, endpoint: str) -> Credential | None:
        """The credentials to use at ``endpoint`` (None: anonymous); the module's rule."""
        own = self._credentials.for_host(urlsplit(endpoint).netloc)
        if own is not None:
            return own
        if endpoint in self._entitled:
            return self._credentials.lookup(self.registry)
        return None

    def header(self, endpoint: str, scope: str) -> str | None:
        """An ``Authorization`` value known to work, without a round trip; or None."""
        credential = self.credential(endpoint)
        if endpoint in self._basic and credential is not None and credential.password:
            return credential.basic()
        token = self._tokens.get(self._key(endpoint, scope, credential), self._clock.monotonic())
        return f"Bearer {token.value}" if token is not None else None

    def forget(self) -> None:
        """Drop every cached token (the credentials changed)."""
        self._tokens.clear()

    def _credentials_changed(self, changed: set[str]) -> None:
        if changed:
            self.forget()

    @staticmethod
    def _key(endpoint: str, scope: str, credential: Credential | None) -> TokenKey:
        return endpoint, scope, credential.fingerprint if credential is not None else ""

    async def answer(self, endpoint: str, challenge: Challenge | None, scope: str) -> str:
        """Answer a 401 challenge; returns the ``Authorization`` value for the retry."""
        credential = self.credential(endpoint)
        if challenge is not None and challenge.scheme == "basic":
            if credential is None or not credential.password:
                self._metrics.upstream_auth_failures.labels(self.registry, "401").inc()
                raise UpstreamUnauthorized(
                    f"{self.registry} refused the mirror (401, Basic auth required): "
                    + refused_hint(self.registry, None)
                )
            self._basic.add(endpoint)
            return credential.basic()
        if challenge is None or challenge.scheme != "bearer":
            self._metrics.upstream_auth_failures.labels(self.registry, "401").inc()
            raise UpstreamUnauthorized(
                f"{self.registry} refused the mirror (401) with no challenge cachesvc can "
                f"answer: {refused_hint(self.registry, credential)}"
            )
        self._basic.discard(endpoint)
        key = self._key(endpoint, scope, credential)
        self._tokens.pop(key)
        task = self._inflight.get(key)
        if task is None:
            task = asyncio.get_running_loop().create_task(self._fetch(challenge, scope, credential))
            self._inflight[key] = task
            task.add_done_callback(lambda _t: self._inflight.pop(key, None))
        token = await asyncio.shield(task)
        self._tokens.put(key, token, self._clock.monotonic())
        return f"Bearer {token.value}"

    async def _fetch(
        self, challenge: Challenge, scope: str, credential: Credential | None
    ) -> Token:
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
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self._timeout):
                deadline = loop.time() + self._timeout
                return await self._exchange(URL(realm), form, query, given, deadline)
        except TimeoutError:
            self._metrics.token_fetches.labels(registry, "error").inc()
            raise UpstreamTimeout(f"token service of {registry} did not answer in time") from None
        except aiohttp.ClientError as exc:
            self._metrics.token_fetches.labels(registry, "error").inc()
            raise UpstreamError(
                f"token service of {registry} unreachable: {connection_failure(exc)}"
            ) from None
        except ManifestInvalid:  # read_whole's "too big"
            self._metrics.token_fetches.labels(registry, "error").inc()
            raise UpstreamUnreachable(
                f"the token service of {registry} sent an answer over {MAX_TOKEN_ANSWER} bytes; "
                "refused"
            ) from None

    async def _exchange(
        self,
        url: URL,
        form: dict[str, str] | None,
        query: dict[str, str] | None,
        given: dict[str, str],
        deadline: float,
    ) -> tuple[int, bytes]:
        """The token request, redirects followed by the registry rules; (status, body)."""
        method = "GET" if form is None else "POST"
        seen = {str(url)}
        for hops in range(redirect.MAX_REDIRECTS + 2):
            problem = addresses.literal_refusal(
                url.host, self._trusted, allow_private=self._redirect_private
            )
            if problem is not None:
                raise UpstreamUnauthorized(f"the token service of {self.registry}: {problem}")
            proxy, proxy_headers, headers = self._egress.route(url, given)
            async with self._session.request(
                method,
                url,
                data=form,
                params=query,
                headers=headers,
                ssl=self._ssl,
                proxy=proxy,
                proxy_headers=proxy_headers,
                allow_redirects=False,
            ) as resp:
                if resp.status not in redirect.REDIRECTS:
                    path = f"token service {redirect.where(url)}"
                    body = await read_whole(
                        resp, MAX_TOKEN_ANSWER, self.registry, path, deadline=deadline
                    )
                    return resp.status, body
                here = resp.url
                target = redirect.target_of(here, resp.headers.get("Location"))
                code = resp.status
            refused = redirect.refusal(
                here, target, hops=hops + 1, seen=seen, insecure=self._insecure
            )
            if refused is not None or target is None:
                raise UpstreamUnauthorized(f"the token service of {self.registry}: {refused}")
            if target.origin() != here.origin() and (form is not None or given):
                raise UpstreamUnauthorized(
                    f"the token service of {self.registry} redirected the token request to "
                    f"{redirect.where(target.origin())}; cachesvc sends its credentials to no "
                    "other host than the one the registry named"
                )
            seen.add(str(target))
            if code == 303:
                method, form = "GET", None
            url, query = target, None
        raise UpstreamUnauthorized(f"the token service of {self.registry}: too many redirects")

    def _token(self, status: int, body: bytes, credential: Credential | None) -> Token:
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
        if len(value) > MAX_TOKEN:
            self._metrics.token_fetches.labels(registry, "error").inc()
            raise UpstreamUnreachable(
                f"the token service of {registry} sent a token of {len(value)} bytes; cachesvc "
                f"accepts tokens up to 64 KiB ({MAX_TOKEN} bytes)"
            )
        self._metrics.token_fetches.labels(registry, "ok").inc()
        lifetime = (
            max(1.0, expires_in - EXPIRY_MARGIN) if expires_in > 2 * EXPIRY_MARGIN else expires_in
        )
        return Token(value, self._clock.monotonic() + lifetime)
