"""Loopback ports and readiness polling."""

from __future__ import annotations

import socket
import ssl
import time
import urllib.error
import urllib.request

__all__ = ["LOOPBACK", "free_port", "http_answers", "refused_url", "wait_for_http"]

LOOPBACK = "127.0.0.1"


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that was free a moment ago.

    The kernel picks it (bind to port 0); the socket is closed before returning, so a tiny race
    with other processes remains. Callers start their server right away.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        port: int = sock.getsockname()[1]
        return port


def refused_url() -> str:
    """A loopback URL where nothing listens (connections are refused)."""
    return f"http://{LOOPBACK}:{free_port()}"


def wait_for_http(
    url: str,
    timeout: float = 10.0,
    *,
    ok_statuses: frozenset[int] = frozenset(range(200, 500)),
    ssl_context: ssl.SSLContext | None = None,
) -> int:
    """Poll ``url`` with GET until it answers with one of ``ok_statuses``; return that status.

    Any HTTP answer below 500 counts as "up" by default (a registry with auth answers 401 on
    ``/v2/``). Raises ``TimeoutError`` naming the last error when ``timeout`` seconds pass.
    For https URLs without ``ssl_context``, certificates are not verified (loopback test peers).
    """
    if ssl_context is None and url.startswith("https:"):
        ssl_context = ssl.create_default_context()
        ssl_context.check_hostname = False
        ssl_context.verify_mode = ssl.CERT_NONE
    # Bypass any proxy from the environment: these servers are always on loopback.
    opener = urllib.request.build_opener(
        urllib.request.ProxyHandler({}), urllib.request.HTTPSHandler(context=ssl_context)
    )
    deadline = time.monotonic() + timeout
    last: str = "no attempt made"
    while True:
        try:
            with opener.open(url, timeout=2.0) as resp:
                status: int = resp.status
        except urllib.error.HTTPError as exc:
            status = exc.code
        except (OSError, ValueError) as exc:
            last = repr(exc)
            status = -1
        if status in ok_statuses:
            return status
        if status != -1:
            last = f"HTTP {status}"
        if time.monotonic() >= deadline:
            raise TimeoutError(f"{url} not ready after {timeout:.1f}s: {last}")
        time.sleep(0.05)


def http_answers(url: str, *, ok_statuses: frozenset[int] = frozenset(range(200, 500))) -> bool:
    """One GET of ``url`` (see :func:`wait_for_http`): did it answer with one of ``ok_statuses``?"""
    try:
        wait_for_http(url, timeout=0, ok_statuses=ok_statuses)
    except TimeoutError:
        return False
    return True
