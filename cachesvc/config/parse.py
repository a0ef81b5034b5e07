"""Validation of a configuration mapping (as read from YAML) into a ``Config``, and the
embedded default. Every error names the key path (``registries.docker.io.tag_ttl``) so
``cachesvc serve`` can print it on one line and exit 2. Unknown keys are errors: a typo
must not silently fall back to a default."""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml

from cachesvc.config.cluster import ClusterConfig, parse_cluster
from cachesvc.config.model import (
    AdminConfig,
    ClientsConfig,
    Config,
    ContainerdCheck,
    ListenAddress,
    LogConfig,
    PrewarmConfig,
    RegistryConfig,
    StorageConfig,
    Timeouts,
    VerifyConfig,
)
from cachesvc.config.values import (
    DIRECT,
    endpoint,
    mapping,
    parse_duration,
    parse_listen,
    parse_share,
    parse_size,
    parse_version,
    positive,
    proxy_url,
    reject_unknown,
    string,
)
from cachesvc.errors import ConfigError
from cachesvc.oci import is_registry_host
from cachesvc.policy.clients import compile_clients
from cachesvc.policy.keys import read_key_file
from cachesvc.policy.repositories import RepositoryAllowList, compile_allow

DEFAULT_CONFIG_YAML = """\
# cachesvc embedded default: mirrors the big public registries at their real endpoints.
# Every other value is the default of its field in cachesvc.config.model.
default_registry: "docker.io"
registries:
  docker.io:
    endpoints: ["https://registry-1.docker.io"]
  ghcr.io:
    endpoints: ["https://ghcr.io"]
  quay.io:
    endpoints: ["https://quay.io"]
  registry.k8s.io:
    endpoints: ["https://registry.k8s.io"]
"""

# The defaults, read from the model's own field defaults: each is written once, beside its
# field in cachesvc.config.model (typed attribute access, so mypy checks every use here).
_DEFAULT = Config()
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


def _optional_path(value: object, key: str) -> Path | None:
    return Path(string(value, key)) if value is not None else None


def _count(value: object, key: str) -> int | None:
    """A whole number of at least 1; None when unset."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(key, f"expected a whole number of at least 1, got {value!r}")
    return value


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


def _registry(name: str, data: Mapping[str, Any], key: str) -> RegistryConfig:
    reject_unknown(data, _REGISTRY_KEYS, key)
    raw = data.get("endpoints")
    if not isinstance(raw, list) or not raw:
        raise ConfigError(f"{key}.endpoints", "expected a non-empty list of URLs")
    default_prefix = _path_prefix(data.get("path_prefix"), f"{key}.path_prefix")
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
    insecure = _flag(data, "insecure", key, _REGISTRY.insecure)
    for i, url in enumerate(endpoints):
        if url.startswith("http://") and not insecure and not _is_loopback(url):
            raise ConfigError(
                f"{key}.endpoints[{i}]",
                "plain http to a non-loopback host needs 'insecure: true' on the registry",
            )
    client_cert = _optional_path(data.get("client_cert"), f"{key}.client_cert")
    client_key = _optional_path(data.get("client_key"), f"{key}.client_key")
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
        ca_file=_optional_path(data.get("ca_file"), f"{key}.ca_file"),
        client_cert=client_cert,
        client_key=client_key,
        insecure=insecure,
        max_concurrent=_count(data.get("max_concurrent"), f"{key}.max_concurrent"),
        requests_per_second=_rate(data, key),
        burst=_count(data.get("burst"), f"{key}.burst") or _REGISTRY.burst,
        queue_size=_count(data.get("queue_size"), f"{key}.queue_size") or _REGISTRY.queue_size,
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


def parse_config(data: object) -> Config:
    """Validate a configuration mapping (as read from YAML) into a ``Config``.

    Sections are checked in file order, so the first error reported is the first a
    reader of the file meets.
    """
    root = mapping(data, "")
    reject_unknown(
        root,
        {"listen", "admin", "storage", "default_registry", "registries", "timeouts", "log",
         "event_loop", "shutdown_grace", "prewarm", "credentials_file", "cluster",
         "containerd", "max_connections", "clients"},
        "",
    )  # fmt: skip
    listen = parse_listen(root["listen"], "listen") if "listen" in root else _DEFAULT.listen
    admin = _admin(mapping(root.get("admin"), "admin"))
    if admin.listen == listen and listen.port != 0:
        raise ConfigError("admin.listen", "must differ from listen")
    storage = _storage(mapping(root.get("storage"), "storage"))
    prewarm = _prewarm(mapping(root.get("prewarm"), "prewarm"))
    registries = _registries(mapping(root.get("registries"), "registries"))
    default_registry = root.get("default_registry")
    if default_registry is not None:
        default_registry = string(default_registry, "default_registry")
        if default_registry not in registries:
            raise ConfigError(
                "default_registry", f"{default_registry!r} is not one of the configured registries"
            )
    timeouts = _timeouts(mapping(root.get("timeouts"), "timeouts"))
    log = _log(mapping(root.get("log"), "log"))
    event_loop = root.get("event_loop", _DEFAULT.event_loop)
    if event_loop not in ("asyncio", "uvloop"):
        raise ConfigError("event_loop", "expected asyncio or uvloop")
    return Config(
        listen=listen,
        admin=admin,
        storage=storage,
        default_registry=default_registry,
        registries=registries,
        timeouts=timeouts,
        log=log,
        event_loop=event_loop,
        shutdown_grace=positive(
            root.get("shutdown_grace"), "shutdown_grace", _DEFAULT.shutdown_grace
        ),
        prewarm=prewarm,
        credentials_file=_optional_path(root.get("credentials_file"), "credentials_file"),
        cluster=_cluster(root, listen, admin.listen),
        containerd=_containerd(mapping(root.get("containerd"), "containerd")),
        max_connections=_count(root.get("max_connections"), "max_connections")
        or _DEFAULT.max_connections,
        clients=_clients(mapping(root.get("clients"), "clients")),
    )


def _cluster(
    root: Mapping[str, Any], listen: ListenAddress, admin: ListenAddress
) -> ClusterConfig | None:
    """``cluster:`` when present; its listener must be none of the other two."""
    if "cluster" not in root:
        return None
    cluster = parse_cluster(root["cluster"], "cluster")
    peer = ListenAddress(cluster.listen.host, cluster.listen.port)
    for other, name in ((listen, "listen"), (admin, "admin.listen")):
        if other.port == peer.port and other.port != 0 and _overlap(other.host, peer.host):
            raise ConfigError("cluster.listen", f"must differ from {name} ({other})")
    return cluster


def _overlap(a: str, b: str) -> bool:
    """Whether two bind hosts can take the same port (equal, or either a wildcard)."""
    wildcard = ("0.0.0.0", "::", "")
    return a == b or a in wildcard or b in wildcard


def _admin(raw: Mapping[str, Any]) -> AdminConfig:
    reject_unknown(raw, {"listen", "token_file"}, "admin")
    token_file = raw.get("token_file")
    return AdminConfig(
        listen=(
            parse_listen(raw["listen"], "admin.listen")
            if "listen" in raw
            else _DEFAULT.admin.listen
        ),
        token_file=Path(string(token_file, "admin.token_file")) if token_file else None,
    )


def _storage(raw: Mapping[str, Any]) -> StorageConfig:
    known = {"root", "max_size", "max_age", "sweep_interval", "scrub_rate", "scrub_interval",
             "min_free"}  # fmt: skip
    reject_unknown(raw, known, "storage")
    max_size = raw.get("max_size")
    max_age = raw.get("max_age")
    share = parse_share(max_size, "storage.max_size", whole=True) if max_size is not None else None
    min_free = raw.get("min_free")
    return StorageConfig(
        root=(
            Path(string(raw["root"], "storage.root")) if "root" in raw else _DEFAULT.storage.root
        ),
        max_size=share.bytes if share is not None else None,
        max_age=positive(max_age, "storage.max_age", 0.0) if max_age is not None else None,
        sweep_interval=positive(
            raw.get("sweep_interval"), "storage.sweep_interval", _DEFAULT.storage.sweep_interval
        ),
        max_size_percent=share.percent if share is not None else None,
        min_free=parse_share(min_free, "storage.min_free") if min_free is not None else None,
        **_scrub(raw),
    )


def _containerd(raw: Mapping[str, Any]) -> ContainerdCheck:
    """The wiring check: off without ``config``; see ``ContainerdCheck``."""
    reject_unknown(raw, {"config", "host_root", "version", "interval"}, "containerd")
    default = _DEFAULT.containerd
    version = raw.get("version")
    return ContainerdCheck(
        config=_optional_path(raw.get("config"), "containerd.config"),
        host_root=(
            Path(string(raw["host_root"], "containerd.host_root"))
            if "host_root" in raw
            else default.host_root
        ),
        version=parse_version(version, "containerd.version") if version is not None else None,
        interval=positive(raw.get("interval"), "containerd.interval", default.interval),
    )


def _scrub(raw: Mapping[str, Any]) -> dict[str, Any]:
    """``storage.scrub_rate`` (a size per second; 0 turns the scrub off) and its interval."""
    rate = raw.get("scrub_rate", _DEFAULT.storage.scrub_rate)
    return {
        "scrub_rate": 0 if rate in (0, "0") else parse_size(rate, "storage.scrub_rate"),
        "scrub_interval": positive(
            raw.get("scrub_interval"), "storage.scrub_interval", _DEFAULT.storage.scrub_interval
        ),
    }


def _prewarm(raw: Mapping[str, Any]) -> PrewarmConfig:
    reject_unknown(raw, {"concurrency", "retention"}, "prewarm")
    concurrency = raw.get("concurrency", _DEFAULT.prewarm.concurrency)
    if (
        isinstance(concurrency, bool)
        or not isinstance(concurrency, int)
        or not 1 <= concurrency <= 64
    ):
        raise ConfigError("prewarm.concurrency", "expected a whole number from 1 to 64")
    return PrewarmConfig(
        concurrency=concurrency,
        retention=positive(raw.get("retention"), "prewarm.retention", _DEFAULT.prewarm.retention),
    )


def _registries(raw: Mapping[str, Any]) -> dict[str, RegistryConfig]:
    registries: dict[str, RegistryConfig] = {}
    for name, value in raw.items():
        key = f"registries.{name}"
        if not is_registry_host(name):
            raise ConfigError(key, "registry names are host or host:port, e.g. ghcr.io")
        registries[name] = _registry(name, mapping(value, key), key)
    if not registries:
        raise ConfigError("registries", "configure at least one registry to mirror")
    return registries


def _timeouts(raw: Mapping[str, Any]) -> Timeouts:
    names = ("connect", "first_byte", "stall", "client_header", "client_idle")
    reject_unknown(raw, set(names), "timeouts")
    default = _DEFAULT.timeouts
    values = {n: positive(raw.get(n), f"timeouts.{n}", getattr(default, n)) for n in names}
    return Timeouts(**values)


def _log(raw: Mapping[str, Any]) -> LogConfig:
    reject_unknown(raw, {"level", "format", "access_log"}, "log")
    level = str(raw.get("level", _DEFAULT.log.level)).lower()
    if level not in ("debug", "info", "warning", "error"):
        raise ConfigError("log.level", "expected one of debug, info, warning, error")
    fmt = str(raw["format"]).lower() if "format" in raw else _DEFAULT.log.format
    if fmt not in (None, "json", "text"):
        raise ConfigError("log.format", "expected json or text")
    access_log = raw.get("access_log", _DEFAULT.log.access_log)
    if not isinstance(access_log, bool):
        raise ConfigError("log.access_log", "expected true or false")
    return LogConfig(level=level, format=fmt, access_log=access_log)


def _clients(raw: Mapping[str, Any]) -> ClientsConfig:
    """``clients.allow``: CIDRs (IPv4 and IPv6); unset or null: every client."""
    reject_unknown(raw, {"allow"}, "clients")
    cidrs = raw.get("allow")
    if cidrs is None:
        return ClientsConfig()
    if not isinstance(cidrs, list) or not cidrs:
        raise ConfigError("clients.allow", "expected a non-empty list of CIDRs (unset: all)")
    return ClientsConfig(allow=compile_clients(cidrs, "clients.allow"))


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


def parse_yaml(text: str, source: str = "<config>") -> Config:
    """Parse YAML text into a ``Config``."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise ConfigError("", f"{source}: not valid YAML{where}") from None
    return parse_config(data)


def load_config(path: Path) -> Config:
    """Read and validate a configuration file."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError("", f"cannot read config file {path}: {exc}") from None
    return parse_yaml(text, str(path))


def default_config() -> Config:
    """The embedded default configuration."""
    return parse_yaml(DEFAULT_CONFIG_YAML, "<embedded default>")
