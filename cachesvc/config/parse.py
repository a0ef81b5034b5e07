"""Validation of a configuration mapping (as read from YAML) into a ``Config``, and the
embedded default. Every error names the key path (``registries.docker.io.tag_ttl``) so
``cachesvc serve`` can print it on one line and exit 2. Unknown keys are errors: a typo
must not silently fall back to a default."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

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
    StorageConfig,
    Timeouts,
)
from cachesvc.config.registry import parse_registries
from cachesvc.config.values import (
    count,
    mapping,
    optional_path,
    parse_listen,
    parse_share,
    parse_size,
    parse_version,
    positive,
    reject_unknown,
    string,
)
from cachesvc.errors import ConfigError
from cachesvc.policy.clients import compile_clients

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
    registries = parse_registries(mapping(root.get("registries"), "registries"))
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
        credentials_file=optional_path(root.get("credentials_file"), "credentials_file"),
        cluster=_cluster(root, listen, admin.listen),
        containerd=_containerd(mapping(root.get("containerd"), "containerd")),
        max_connections=count(root.get("max_connections"), "max_connections")
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
        config=optional_path(raw.get("config"), "containerd.config"),
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
