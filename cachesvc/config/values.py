"""Parsers for the values a configuration holds: durations, sizes, listen addresses,
endpoint URLs and forward-proxy URLs. Each error names the key path it was found at."""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from yarl import URL

from cachesvc.config.model import DiskShare, ListenAddress
from cachesvc.errors import ConfigError

DIRECT = "direct"  # the ``proxy`` value that ignores the environment

_DURATION_RE = re.compile(r"(?:(\d+(?:\.\d+)?)(ms|s|m|h|d))+")
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")
_UNIT = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_SIZE_RE = re.compile(r"(\d+(?:\.\d+)?)\s*([KMGT]i?B?|B)?", re.IGNORECASE)
_SIZE_UNIT = {
    "": 1, "B": 1,
    "K": 1000, "KB": 1000, "KI": 1024, "KIB": 1024,
    "M": 1000**2, "MB": 1000**2, "MI": 1024**2, "MIB": 1024**2,
    "G": 1000**3, "GB": 1000**3, "GI": 1024**3, "GIB": 1024**3,
    "T": 1000**4, "TB": 1000**4, "TI": 1024**4, "TIB": 1024**4,
}  # fmt: skip


def parse_duration(value: object, key: str) -> float:
    """``"60s"``, ``"5m"``, ``"1h30m"``, ``"7d"``, ``"250ms"`` or a number of seconds."""
    if isinstance(value, bool):
        raise ConfigError(key, f"expected a duration such as '60s', got {value!r}")
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str) and _DURATION_RE.fullmatch(value.strip()):
        seconds = sum(float(n) * _UNIT[u] for n, u in _DURATION_PART.findall(value.strip()))
    else:
        raise ConfigError(key, f"expected a duration such as '60s', '5m' or '7d', got {value!r}")
    if seconds < 0 or seconds > 10 * 365 * 86400:
        raise ConfigError(key, f"duration out of range: {value!r}")
    return seconds


def parse_size(value: object, key: str) -> int:
    """``"50GiB"``, ``"500MB"``, ``1073741824``."""
    if isinstance(value, bool):
        raise ConfigError(key, f"expected a size such as '50GiB', got {value!r}")
    if isinstance(value, int):
        size = value
    elif isinstance(value, str) and (m := _SIZE_RE.fullmatch(value.strip())):
        size = int(float(m.group(1)) * _SIZE_UNIT[(m.group(2) or "").upper()])
    else:
        raise ConfigError(key, f"expected a size such as '50GiB' or '500MB', got {value!r}")
    if size <= 0:
        raise ConfigError(key, f"size must be positive, got {value!r}")
    return size


_PERCENT_RE = re.compile(r"(\d+(?:\.\d+)?)\s*%")
_VERSION_RE = re.compile(r"v?(\d+)\.(\d+)(?:\.\d+)?")


def parse_share(value: object, key: str, *, whole: bool = False) -> DiskShare:
    """A size (``parse_size``) or a percentage of the filesystem: ``"20%"``, ``"12.5%"``.

    0 % and (unless ``whole``) 100 % are refused: neither bounds anything usefully.
    """
    if isinstance(value, str) and (m := _PERCENT_RE.fullmatch(value.strip())):
        percent = float(m.group(1))
        if not 0 < percent < 100 and not (whole and percent == 100):
            top = "100%" if whole else "under 100%"
            raise ConfigError(key, f"percentage must be above 0% and {top}, got {value!r}")
        return DiskShare(percent=percent)
    try:
        return DiskShare(bytes=parse_size(value, key))
    except ConfigError:
        raise ConfigError(key, f"expected a size such as '50GiB' or a percentage of the "
                          f"filesystem such as '20%', got {value!r}") from None  # fmt: skip


def parse_version(value: object, key: str) -> tuple[int, int]:
    """A release as ``"X.Y"`` (``"2.2"``, ``"1.7.20"``, ``"v2.1"``): (major, minor)."""
    if isinstance(value, str) and (m := _VERSION_RE.fullmatch(value.strip())):
        return int(m.group(1)), int(m.group(2))
    raise ConfigError(key, f"expected a version such as '2.2' or '1.7', got {value!r}")


def parse_listen(value: object, key: str) -> ListenAddress:
    """``"127.0.0.1:5000"``, ``"[::1]:5000"``, ``"0.0.0.0:5000"``, ``":5000"``."""
    if not isinstance(value, str):
        raise ConfigError(key, f"expected 'host:port', got {value!r}")
    host, sep, port_text = value.rpartition(":")
    if not sep or not port_text.isdigit():
        raise ConfigError(key, f"expected 'host:port', got {value!r}")
    port = int(port_text)
    if not 0 <= port <= 65535:
        raise ConfigError(key, f"port out of range in {value!r}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    host = host or "0.0.0.0"
    try:
        ipaddress.ip_address(host)
    except ValueError:
        if host != "localhost":
            raise ConfigError(key, f"expected an IP address or localhost, got {host!r}") from None
    return ListenAddress(host, port)


def mapping(value: object, key: str) -> Mapping[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise ConfigError(key, f"expected a mapping, got {type(value).__name__}")
    for k in value:
        if not isinstance(k, str):
            raise ConfigError(key, f"keys must be strings, got {k!r}")
    return value


def reject_unknown(data: Mapping[str, Any], allowed: set[str], prefix: str) -> None:
    for k in data:
        if k not in allowed:
            where = f"{prefix}.{k}" if prefix else k
            known = ", ".join(sorted(allowed))
            raise ConfigError(where, f"unknown key (known keys here: {known})")


def string(value: object, key: str) -> str:
    if not isinstance(value, str) or not value:
        raise ConfigError(key, f"expected a non-empty string, got {value!r}")
    return value


def positive(value: object, key: str, default: float) -> float:
    if value is None:
        return default
    seconds = parse_duration(value, key)
    if seconds <= 0:
        raise ConfigError(key, "must be greater than zero")
    return seconds


def endpoint(value: object, key: str) -> str:
    url = string(value, key).rstrip("/")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(key, f"expected an http:// or https:// URL, got {value!r}")
    if parts.query or parts.fragment or parts.username or parts.password:
        raise ConfigError(key, "endpoint URLs carry no query, fragment or credentials")
    return url


def proxy_url(value: str, key: str) -> str:
    """Validate a proxy URL (``http://[user:password@]host[:port]``); ConfigError naming ``key``.

    A bare ``host:port`` means ``http://host:port``, as curl and containerd read it.
    """
    text = value.strip()
    if "://" not in text:
        text = f"http://{text}"
    try:
        url = URL(text)
        url.explicit_port  # noqa: B018 - a port out of range raises here
    except ValueError:
        raise ConfigError(key, "not a usable URL") from None  # never echoed: may hold a password
    if url.scheme != "http":
        raise ConfigError(
            key,
            f"expected an http:// proxy (https targets go through CONNECT), got {url.scheme}://",
        )
    if not url.host or url.path not in ("", "/") or url.query_string or url.fragment:
        raise ConfigError(key, "expected http://[user:password@]host[:port] and nothing else")
    if url.user and ":" in url.user:  # Basic credentials cannot carry it
        raise ConfigError(key, "the proxy user name cannot contain ':' (%3A)")
    return str(url.with_path(""))


def proxy_environment(environ: Mapping[str, str]) -> tuple[tuple[str, str], ...]:
    """``HTTP_PROXY``, ``HTTPS_PROXY`` and ``NO_PROXY`` of ``environ``, validated.

    As ``(scheme, value)`` pairs (``http``, ``https``, ``no``) for ``Egress``; the lower-case
    variable wins over the upper-case one, and an empty one means unset. Raises
    ConfigError naming the variable when a proxy URL cannot be used. Only the CLI calls
    this (with ``os.environ``): the daemon gets the pairs in its ``Config``.
    """
    pairs: list[tuple[str, str]] = []
    for scheme in ("http", "https", "no"):
        upper, lower = f"{scheme.upper()}_PROXY", f"{scheme}_proxy"
        value = environ[lower] if lower in environ else environ.get(upper, "")
        if value:
            pairs.append((scheme, value if scheme == "no" else proxy_url(value, f"${upper}")))
    return tuple(pairs)


def optional_path(value: object, key: str) -> Path | None:
    """A path, or None when unset."""
    return Path(string(value, key)) if value is not None else None


def count(value: object, key: str) -> int | None:
    """A whole number of at least 1; None when unset."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(key, f"expected a whole number of at least 1, got {value!r}")
    return value
