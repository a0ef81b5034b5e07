"""Fake upstream authentication: htpasswd-style Basic, and a token service.

``BasicGate`` makes a ``FakeRegistry`` answer ``401 WWW-Authenticate: Basic`` unless
the request carries the right ``Authorization: Basic``. ``TokenService`` is a real
aiohttp app of its own (serve it with ``running_service``) implementing the
distribution token spec: ``GET /token`` (anonymous or with Basic credentials) and
``POST /token`` (OAuth2 ``grant_type=refresh_token`` with an identity token). As a
gate it accepts only Bearer tokens it issued for the scope and that have not expired
or been revoked. Everything it sees is recorded for assertions.
"""

from __future__ import annotations

import base64
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

from aiohttp import web

from tests.fakes.registry import serve


def basic(username: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{username}:{password}".encode()).decode()


@dataclass
class BasicGate:
    """Accept only ``Authorization: Basic`` for ``username``/``password`` (change at will)."""

    username: str
    password: str
    refused: int = 0

    def challenge(self, request: web.Request, scope: str) -> str | None:
        if request.headers.get("Authorization") == basic(self.username, self.password):
            return None
        self.refused += 1
        return 'Basic realm="fake-registry"'


@dataclass
class TokenRequest:
    method: str
    scope: str
    authorization: str | None
    grant_type: str | None


@dataclass
class TokenService:
    """A token service and the gate that checks its tokens."""

    users: dict[str, str] = field(default_factory=dict)  # username -> password
    refresh_tokens: set[str] = field(default_factory=set)  # valid identity tokens
    anonymous: bool = True  # issue tokens without credentials
    expires_in: int = 300
    url: str = ""
    requests: list[TokenRequest] = field(default_factory=list)
    issued_tokens: list[str] = field(default_factory=list)  # every token ever handed out
    _issued: dict[str, tuple[str, float]] = field(default_factory=dict)  # token -> scope, expiry

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_route("*", "/token", self._token)
        return app

    def revoke_all(self) -> None:
        """Server-side revocation: cached tokens stop working (the client must re-challenge)."""
        self._issued.clear()

    def challenge(self, request: web.Request, scope: str) -> str | None:
        header = request.headers.get("Authorization", "")
        if header.startswith("Bearer "):
            issued = self._issued.get(header[len("Bearer ") :])
            if issued is not None and issued[0] == scope and issued[1] > time.monotonic():
                return None
        return f'Bearer realm="{self.url}/token",service="fake-registry",scope="{scope}"'

    async def _token(self, request: web.Request) -> web.Response:
        form = await request.post() if request.method == "POST" else {}
        scope = str(form.get("scope") or request.query.get("scope", ""))
        grant = str(form["grant_type"]) if "grant_type" in form else None
        authorization = request.headers.get("Authorization")
        self.requests.append(TokenRequest(request.method, scope, authorization, grant))
        if request.query.get("service", form.get("service")) != "fake-registry":
            return web.json_response({"details": "wrong service"}, status=400)
        if grant == "refresh_token":
            if form.get("refresh_token") not in self.refresh_tokens:
                return web.json_response({"details": "bad refresh token"}, status=401)
        elif authorization is not None:
            if authorization not in {basic(u, p) for u, p in self.users.items()}:
                return web.json_response({"details": "bad credentials"}, status=401)
        elif not self.anonymous:
            return web.json_response({"details": "credentials required"}, status=401)
        token = f"issued-{len(self.requests)}-{time.monotonic_ns()}"
        self._issued[token] = (scope, time.monotonic() + self.expires_in)
        self.issued_tokens.append(token)
        key = "access_token" if grant else "token"
        return web.json_response({key: token, "expires_in": self.expires_in})


@asynccontextmanager
async def running_service(service: TokenService) -> AsyncIterator[TokenService]:
    """Serve the token service on a free loopback port and set its ``url``."""
    async with serve(service.app()) as url:
        service.url = url
        yield service
