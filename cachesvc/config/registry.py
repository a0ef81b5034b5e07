"""The ``registries`` section: each mirrored registry's endpoints, TLS, limits and policy.

The largest section by far (endpoints with their own path prefixes and credentials flags,
the plain-http rule, client certificates, rate limits, cool-downs, the repository allow
list and signature verification), so it is parsed here and ``parse.py`` assembles it
with the small sections. Error keys are the full key path, as everywhere in the config.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from cachesvc.config.model import RegistryConfig, VerifyConfig
from cachesvc.config.values import (
    DIRECT,
    count,
    endpoint,
    mapping,
    optional_path,
    parse_duration,
    positive,
    proxy_url,
    reject_unknown,
    string,
)
from cachesvc.errors import ConfigError
from cachesvc.oci import is_registry_host
from cachesvc.policy.keys import read_key_file
from cachesvc.policy.repositories import RepositoryAllowList, compile_allow

__all__ = ["parse_registries"]

# The defaults, read from the model's own field defaults (written once, in the model).
_REGISTRY = RegistryConfig(name="", endpoints=())

_COMPONENT = r"[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*"
_PREFIX_RE = re.compile(rf"{_COMPONENT}(?:/{_COMPONENT})*")
_REGISTRY_KEYS = {
    "endpoints", "tag_ttl", "path_prefix", "ca_file", "client_cert", "client_key", "insecure",
    "max_concurrent", "requests_per_second", "requests_per_minute", "burst", "queue_size",
    "queue_timeout", "max_stale", "negative_ttl", "cooldown", "max_cooldown", "proxy",
    "redirect_private", "allow", "verify",
}  # fmt: skip


def _path_prefix(value: object, key: str) -> str:
    if value is None or value == "":
        return ""
    prefix = string(value, key).strip("/")
    if not _PREFIX_RE.fullmatch(prefix):
        raise ConfigError(
            key, f"expected repository path components such as 'proxy/docker', got {value!r}"
        )
    return prefix


def _is_loopback(url: str) -> bool:
    host = urlsplit(url).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _rate(data: Mapping[str, Any], key: str) -> float | None:
    per_second, per_minute = data.get("requests_per_second"), data.get("requests_per_minute")
    if per_second is not None and per_minute is not None:
        raise ConfigError(f"{key}.requests_per_minute", "set requests_per_second or this, not both")
    for value, name, divisor in ((per_second, "requests_per_second", 1.0),
                                 (per_minute, "requests_per_minute", 60.0)):  # fmt: skip
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
            raise ConfigError(f"{key}.{name}", f"expected a positive number, got {value!r}")
        return float(value) / divisor
    return None


def _endpoints(
    raw: list[Any], default_prefix: str, key: str
) -> tuple[list[str], list[str], set[int]]:
    """The endpoint URLs, each one's path prefix, and the indexes sent credentials.

    An entry is a URL, or a mapping with ``url`` and its own ``path_prefix`` and
    ``credentials`` (whether this endpoint may be sent the registry's credentials).
    """
    endpoints: list[str] = []
    prefixes: list[str] = []
    entitled: set[int] = set()
    for i, entry in enumerate(raw):
        where = f"{key}.endpoints[{i}]"
        if isinstance(entry, Mapping):
            reject_unknown(entry, {"url", "path_prefix", "credentials"}, where)
            if _flag(entry, "credentials", where, False):
                entitled.add(i)
            endpoints.append(endpoint(entry.get("url"), f"{where}.url"))
            own = entry.get("path_prefix")
            prefixes.append(
                default_prefix if own is None else _path_prefix(own, f"{where}.path_prefix")
            )
        else:
            endpoints.append(endpoint(entry, where))
            prefixes.append(default_prefix)
    return endpoints, prefixes, entitled


def _require_tls(endpoints: list[str], insecure: bool, key: str) -> None:
    """Plain http only to loopback unless the registry says ``insecure``: credentials and
    tokens would otherwise cross the network in the clear."""
    for i, url in enumerate(endpoints):
        if url.startswith("http://") and not insecure and not _is_loopback(url):
            raise ConfigError(
                f"{key}.endpoints[{i}]",
                "plain http to a non-loopback host needs 'insecure: true' on the registry",
            )


def _registry(name: str, data: Mapping[str, Any], key: str) -> RegistryConfig:
    reject_unknown(data, _REGISTRY_KEYS, key)
    raw = data.get("endpoints")
    if not isinstance(raw, list) or not raw:
        raise ConfigError(f"{key}.endpoints", "expected a non-empty list of URLs")
    default_prefix = _path_prefix(data.get("path_prefix"), f"{key}.path_prefix")
    endpoints, prefixes, entitled = _endpoints(raw, default_prefix, key)
    insecure = _flag(data, "insecure", key, _REGISTRY.insecure)
    _require_tls(endpoints, insecure, key)
    client_cert = optional_path(data.get("client_cert"), f"{key}.client_cert")
    client_key = optional_path(data.get("client_key"), f"{key}.client_key")
    if client_key is not None and client_cert is None:
        raise ConfigError(f"{key}.client_key", "needs client_cert as well")
    cooldown = positive(data.get("cooldown"), f"{key}.cooldown", _REGISTRY.cooldown)
    max_cooldown = positive(data.get("max_cooldown"), f"{key}.max_cooldown", _REGISTRY.max_cooldown)
    if max_cooldown < cooldown:
        raise ConfigError(f"{key}.max_cooldown", "must be at least cooldown")
    return RegistryConfig(
        name=name,
        endpoints=tuple(endpoints),
        tag_ttl=_duration(data, "tag_ttl", key, _REGISTRY.tag_ttl),
        path_prefixes=tuple(prefixes),
        ca_file=optional_path(data.get("ca_file"), f"{key}.ca_file"),
        client_cert=client_cert,
        client_key=client_key,
        insecure=insecure,
        max_concurrent=count(data.get("max_concurrent"), f"{key}.max_concurrent"),
        requests_per_second=_rate(data, key),
        burst=count(data.get("burst"), f"{key}.burst") or _REGISTRY.burst,
        queue_size=count(data.get("queue_size"), f"{key}.queue_size") or _REGISTRY.queue_size,
        queue_timeout=positive(
            data.get("queue_timeout"), f"{key}.queue_timeout", _REGISTRY.queue_timeout
        ),
        max_stale=_duration(data, "max_stale", key, _REGISTRY.max_stale),
        negative_ttl=_duration(data, "negative_ttl", key, _REGISTRY.negative_ttl),
        cooldown=cooldown,
        max_cooldown=max_cooldown,
        proxy=_proxy(data.get("proxy"), f"{key}.proxy"),
        redirect_private=_flag(data, "redirect_private", key, _REGISTRY.redirect_private),
        credential_endpoints=frozenset(entitled),
        allow=_allow(data.get("allow"), f"{key}.allow"),
        verify=_verify(data.get("verify"), f"{key}.verify"),
    )


def _flag(data: Mapping[str, Any], name: str, key: str, default: bool) -> bool:
    """``data[name]`` as true/false (``default`` when absent)."""
    value = data.get(name, default)
    if not isinstance(value, bool):
        raise ConfigError(f"{key}.{name}", "expected true or false")
    return value


def _duration(data: Mapping[str, Any], name: str, key: str, default: float) -> float:
    """``data[name]`` as a duration, ``default`` when the key is absent (null is an error)."""
    return parse_duration(data[name], f"{key}.{name}") if name in data else default


def _proxy(value: object, key: str) -> str | None:
    if value is None:
        return None
    text = string(value, key)
    return DIRECT if text == DIRECT else proxy_url(text, key)


def parse_registries(raw: Mapping[str, Any]) -> dict[str, RegistryConfig]:
    registries: dict[str, RegistryConfig] = {}
    for name, value in raw.items():
        key = f"registries.{name}"
        if not is_registry_host(name):
            raise ConfigError(key, "registry names are host or host:port, e.g. ghcr.io")
        registries[name] = _registry(name, mapping(value, key), key)
    if not registries:
        raise ConfigError("registries", "configure at least one registry to mirror")
    return registries


def _allow(value: object, key: str) -> RepositoryAllowList | None:
    """``registries.<name>.allow``: repository patterns; unset: every repository."""
    if value is None:
        return None
    if not isinstance(value, list) or not value:
        raise ConfigError(key, "expected a non-empty list of repository patterns (unset: all)")
    return compile_allow(value, key)


def _verify(value: object, key: str) -> VerifyConfig | None:
    """``registries.<name>.verify``: key files are read now, so a bad one fails the load."""
    if value is None:
        return None
    raw = mapping(value, key)
    reject_unknown(raw, {"keys", "mode"}, key)
    files = raw.get("keys")
    if not isinstance(files, list) or not files:
        raise ConfigError(f"{key}.keys", "expected a non-empty list of PEM public key files")
    paths = tuple(Path(string(f, f"{key}.keys[{i}]")) for i, f in enumerate(files))
    for i, path in enumerate(paths):
        read_key_file(path, config_key=f"{key}.keys[{i}]")
    mode = raw.get("mode", VerifyConfig(keys=()).mode)
    if mode not in ("enforce", "warn"):
        raise ConfigError(f"{key}.mode", f"expected enforce or warn, got {mode!r}")
    return VerifyConfig(keys=paths, mode=str(mode))
