"""Which forward (egress) proxy a request to an upstream URL goes through, if any.

A registry's ``proxy`` key decides for every request made for that registry: its
endpoints, their redirects (a CDN) and its token service. Without it, the standard
environment variables decide, read once at start-up by the CLI (``proxy_environment``,
kept in ``Config.proxy_environment``) as containerd reads them:
``HTTPS_PROXY`` / ``HTTP_PROXY`` by the target's scheme (either case) and ``NO_PROXY``
(comma-separated host names, domain suffixes, ``*`` for all). ``proxy: direct`` on a
registry ignores the environment.

Only ``http://`` proxies: plain requests go to them in absolute form, https ones
through a ``CONNECT`` tunnel (what squid and most corporate proxies offer). Proxy
credentials go in the URL (``http://user:password@proxy:3128``) and are sent as
``Proxy-Authorization``; they are never logged.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass

import aiohttp
from yarl import URL

from cachesvc.config import DIRECT
from cachesvc.upstream.addresses import AddressRefused

PROXY_AUTH_REQUIRED = 407
PROXY_AUTH_HINT = (
    "the forward proxy asked for credentials (407 Proxy Authentication Required): put them "
    "in the proxy URL (http://user:password@host:port) of the registry's 'proxy' key or of "
    "$HTTPS_PROXY/$HTTP_PROXY"
)


@dataclass(frozen=True, slots=True)
class Egress:
    """The proxy choice of one registry (see the module docstring)."""

    configured: str | None = None  # the registry's ``proxy`` key: a URL, DIRECT or None
    environment: Mapping[str, str] | None = None  # dict(proxy_environment(...))

    def proxy_for(self, url: URL) -> URL | None:
        """The proxy for a request to ``url``; None to connect directly."""
        if self.configured is not None:
            return None if self.configured == DIRECT else URL(self.configured)
        environment = self.environment or {}
        proxy = environment.get(url.scheme)
        if not proxy or not url.host:
            return None
        if bypassed(url.host, url.port, environment.get("no", "")):
            return None
        return URL(proxy)

    def route(
        self, url: URL, headers: Mapping[str, str]
    ) -> tuple[URL | None, dict[str, str] | None, Mapping[str, str]]:
        """aiohttp's ``proxy`` and ``proxy_headers``, and the request's ``headers``, for ``url``.

        Credentials go in ``Proxy-Authorization`` encoded as UTF-8, as Go (so containerd)
        and curl send them: aiohttp would encode those it finds in the proxy URL as
        Latin-1, which a proxy refuses for any non-ASCII password (and fails on one
        outside Latin-1). On the ``CONNECT`` for https targets; on the request itself
        for http ones (aiohttp sends ``proxy_headers`` only on a ``CONNECT``), never on a
        request inside a tunnel, which the registry would see.
        """
        proxy = self.proxy_for(url)
        if proxy is None or proxy.user is None:
            return proxy, None, headers
        credentials = {
            "Proxy-Authorization": aiohttp.encode_basic_auth(
                proxy.user, proxy.password or "", "utf-8"
            )
        }
        if url.scheme == "http":
            return proxy.with_user(None), None, {**headers, **credentials}
        return proxy.with_user(None), credentials, headers


def bypassed(host: str, port: int | None, no_proxy: str) -> bool:
    """True when ``NO_PROXY`` names ``host`` (curl's rules).

    Entries: ``*`` (everything), a host name (itself and its subdomains; a leading dot
    or ``*.`` is ignored), an IP address or CIDR range, each optionally with ``:port``.
    """
    host = host.strip("[]").lower().rstrip(".")
    try:
        address: ipaddress.IPv4Address | ipaddress.IPv6Address | None = ipaddress.ip_address(host)
    except ValueError:
        address = None
    for raw in no_proxy.split(","):
        entry = raw.strip().lower()
        if entry == "*":
            return True
        entry, wanted_port = _split_port(entry)
        if not entry or (wanted_port is not None and wanted_port != port):
            continue
        if address is not None:
            try:
                if address in ipaddress.ip_network(entry.strip("[]"), strict=False):
                    return True
            except ValueError:
                pass
            continue
        # ``*.corp`` (Go's form, so containerd's: the same NO_PROXY serves both) = ``.corp``
        name = entry.removeprefix("*").lstrip(".").rstrip(".")
        if host == name or host.endswith("." + name):
            return True
    return False


def _split_port(entry: str) -> tuple[str, int | None]:
    if entry.startswith("["):  # [v6] or [v6]:port
        closing = entry.find("]")
        rest = entry[closing + 1 :]
        port = rest[1:] if rest.startswith(":") else ""
        return entry[: closing + 1], int(port) if port.isdigit() else None
    if entry.count(":") == 1:  # name:port or v4:port (a bare v6 address has several)
        name, port = entry.split(":")
        return name, int(port) if port.isdigit() else None
    return entry, None


CONNECT_DIRECTLY = Egress(DIRECT)  # every request without a proxy, whatever the environment


def connection_failure(exc: aiohttp.ClientError) -> str:
    """What went wrong on the way to an upstream, in words (a proxy's part named)."""
    if isinstance(exc, aiohttp.ClientHttpProxyError):
        if exc.status == PROXY_AUTH_REQUIRED:
            return PROXY_AUTH_HINT
        return f"the forward proxy refused the tunnel ({exc.status} {exc.message})"
    if isinstance(exc, aiohttp.ClientConnectorError) and isinstance(exc.os_error, AddressRefused):
        return str(exc.os_error)  # the address rule, in its own words
    if isinstance(exc, aiohttp.ClientProxyConnectionError):
        return f"cannot connect to the forward proxy {exc.host}:{exc.port}"
    return _transport_failure(exc)


def _transport_failure(exc: aiohttp.ClientError) -> str:
    """The README's troubleshooting words, never a Python class name."""
    if isinstance(exc, aiohttp.ClientConnectorCertificateError):
        why = getattr(exc.certificate_error, "verify_message", None) or exc.certificate_error
        return f"TLS handshake failed: the certificate of {exc.host} is not trusted ({why})"
    if isinstance(exc, aiohttp.ClientSSLError):
        return f"TLS handshake failed: {_reason(exc.os_error)}"
    if isinstance(exc, aiohttp.ClientConnectorDNSError):
        return f"name {exc.host} did not resolve"
    if isinstance(exc, aiohttp.ClientConnectorError):
        if isinstance(exc.os_error, ConnectionRefusedError):
            return f"connection refused by {exc.host}:{exc.port}"
        return f"cannot connect to {exc.host}:{exc.port}: {_reason(exc.os_error)}"
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return "the server closed the connection without an answer"
    if isinstance(exc, aiohttp.ClientPayloadError):
        return "the response was cut off"
    if isinstance(exc, aiohttp.ClientOSError):
        return f"connection failed: {_reason(exc)}"
    return str(exc) or "connection failed"


def _reason(error: OSError) -> str:
    """``[Errno 111] Connection refused`` -> ``connection refused``; SSL's reason words."""
    text = str(getattr(error, "reason", None) or error.strerror or error or "unknown error")
    return text.replace("_", " ").lower() if text.isupper() else text
