"""Typed, frozen configuration: YAML loading, validation and the embedded default.

``Config`` only stores values; ``load_config`` reads a file and ``parse_config``
validates a mapping. Every error names the key path (``registries.docker.io.tag_ttl``)
so ``cachesvc serve`` can print it on one line and exit 2. Unknown keys are errors:
a typo must not silently fall back to a default.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml

from cachesvc.egress import DIRECT, proxy_url
from cachesvc.errors import ConfigError
from cachesvc.oci import is_registry_host

DEFAULT_CONFIG_YAML = """\
# cachesvc embedded default: mirrors the big public registries at their real endpoints.
listen: "127.0.0.1:5000"
admin:
  listen: "127.0.0.1:5050"
storage:
  root: "/var/lib/cachesvc"
default_registry: "docker.io"
registries:
  docker.io:
    endpoints: ["https://registry-1.docker.io"]
    tag_ttl: "60s"
  ghcr.io:
    endpoints: ["https://ghcr.io"]
    tag_ttl: "60s"
  quay.io:
    endpoints: ["https://quay.io"]
    tag_ttl: "60s"
  registry.k8s.io:
    endpoints: ["https://registry.k8s.io"]
    tag_ttl: "60s"
"""

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


@dataclass(frozen=True, slots=True)
class ListenAddress:
    """A host and port to bind; ``host`` may be an IPv6 literal without brackets."""

    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


@dataclass(frozen=True, slots=True)
class Timeouts:
    """Upstream timeouts in seconds.

    ``connect``: TCP + TLS handshake per endpoint. ``first_byte``: from sending the
    request to the response headers. ``stall``: longest gap between two body reads
    of a fill before it is abandoned.
    """

    connect: float = 5.0
    first_byte: float = 30.0
    stall: float = 30.0


@dataclass(frozen=True, slots=True)
class RegistryConfig:
    """One upstream registry cachesvc mirrors (and the only kind it ever contacts).

    Defaults and what "unset" means (docs/upstream.md has the operator's view):

    - ``endpoints``: URLs tried in order; ``path_prefixes[i]`` is the repository prefix of
      ``endpoints[i]`` (``""``: none), from the endpoint's own ``path_prefix`` or the
      registry's. ``/v2/<prefix>/<repository>/...`` is what a prefixed endpoint is asked.
    - TLS: ``ca_file`` is trusted *in addition to* the system CAs; ``client_cert`` (+
      ``client_key`` unless the cert file holds the key) enables mTLS; ``insecure`` allows
      plain http to non-loopback hosts and switches certificate verification off.
    - Limits: ``max_concurrent`` None: no bound; ``requests_per_second`` None: no rate
      limit (``requests_per_minute`` is stored divided by 60); ``burst`` requests may go
      back to back before pacing; waiting requests are bounded by ``queue_size`` and
      ``queue_timeout`` and then answered 429 with Retry-After.
    - ``max_stale``: longest time a tag keeps resolving from cache while upstream fails
      (0: never serve stale). ``negative_ttl``: how long an upstream 404 for a tag is
      remembered (0: not at all).
    - ``cooldown``/``max_cooldown``: a failed endpoint is skipped for ``cooldown``, doubled
      per consecutive failure up to ``max_cooldown``.
    - ``proxy``: the forward proxy for everything fetched for this registry
      (``cachesvc.egress``); ``direct`` ignores ``HTTPS_PROXY``/``HTTP_PROXY``.
    """

    name: str
    endpoints: tuple[str, ...]
    tag_ttl: float = 60.0
    path_prefixes: tuple[str, ...] = ()
    ca_file: Path | None = None
    client_cert: Path | None = None
    client_key: Path | None = None
    insecure: bool = False
    max_concurrent: int | None = None
    requests_per_second: float | None = None
    burst: int = 1
    queue_size: int = 256
    queue_timeout: float = 10.0
    max_stale: float = 7 * 86400.0
    negative_ttl: float = 15.0
    cooldown: float = 5.0
    max_cooldown: float = 300.0
    proxy: str | None = None  # forward proxy URL, "direct", or None: the environment decides

    def path_prefix(self, index: int) -> str:
        """The repository prefix of ``endpoints[index]`` (``""`` when none)."""
        return self.path_prefixes[index] if index < len(self.path_prefixes) else ""


@dataclass(frozen=True, slots=True)
class AdminConfig:
    """The admin listener: /metrics, /healthz, /readyz and /admin/v1."""

    listen: ListenAddress = ListenAddress("127.0.0.1", 5050)
    token_file: Path | None = None  # unset: the /admin/v1 API answers 403


@dataclass(frozen=True, slots=True)
class StorageConfig:
    """Where blobs, manifests, temp files and the index live."""

    root: Path = Path("/var/lib/cachesvc")
    max_size: int | None = None  # bytes; unset: no size bound (size eviction off)
    max_age: float | None = None  # seconds since last access; unset: no age limit
    sweep_interval: float = 60.0  # seconds between full eviction sweeps of the store


@dataclass(frozen=True, slots=True)
class PrewarmConfig:
    """Prewarm jobs: how many blobs they fetch at once and how long finished jobs stay."""

    concurrency: int = 4  # blob fetches at once, across all jobs
    retention: float = 3600.0  # seconds a finished job stays visible in /admin/v1/jobs


@dataclass(frozen=True, slots=True)
class LogConfig:
    """Log level and format (``json`` lines or ``text``)."""

    level: str = "info"
    format: str = "json"
    access_log: bool = True


@dataclass(frozen=True, slots=True)
class Config:
    """The whole daemon configuration; built once by the CLI and passed down."""

    listen: ListenAddress = ListenAddress("127.0.0.1", 5000)
    admin: AdminConfig = field(default_factory=AdminConfig)
    storage: StorageConfig = field(default_factory=StorageConfig)
    default_registry: str | None = "docker.io"
    registries: Mapping[str, RegistryConfig] = field(default_factory=dict)
    timeouts: Timeouts = field(default_factory=Timeouts)
    log: LogConfig = field(default_factory=LogConfig)
    event_loop: str = "asyncio"  # or "uvloop"; see README "Event loop" for the measurements
    shutdown_grace: float = 20.0  # SIGTERM: seconds in-flight responses and fills may take
    prewarm: PrewarmConfig = field(default_factory=PrewarmConfig)
    # A Docker config.json (a mounted dockerconfigjson Secret); unset: every registry anonymous.
    credentials_file: Path | None = None
    # HTTP(S)_PROXY / NO_PROXY as the CLI read them (cachesvc.egress.proxy_environment):
    # (scheme, value) pairs for registries without a ``proxy`` key; empty: connect directly.
    proxy_environment: tuple[tuple[str, str], ...] = ()


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


def _mapping(value: object, key: str) -> Mapping[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise ConfigError(key, f"expected a mapping, got {type(value).__name__}")
    for k in value:
        if not isinstance(k, str):
            raise ConfigError(key, f"keys must be strings, got {k!r}")
    return value


def _reject_unknown(data: Mapping[str, Any], allowed: set[str], prefix: str) -> None:
    for k in data:
        if k not in allowed:
            where = f"{prefix}.{k}" if prefix else k
            known = ", ".join(sorted(allowed))
            raise ConfigError(where, f"unknown key (known keys here: {known})")


def _string(value: object, key: str) -> str:
    if not isinstance(value, str) or not value:
        raise ConfigError(key, f"expected a non-empty string, got {value!r}")
    return value


def _positive(value: object, key: str, default: float) -> float:
    if value is None:
        return default
    seconds = parse_duration(value, key)
    if seconds <= 0:
        raise ConfigError(key, "must be greater than zero")
    return seconds


def _endpoint(value: object, key: str) -> str:
    url = _string(value, key).rstrip("/")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(key, f"expected an http:// or https:// URL, got {value!r}")
    if parts.query or parts.fragment or parts.username or parts.password:
        raise ConfigError(key, "endpoint URLs carry no query, fragment or credentials")
    return url


_COMPONENT = r"[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*"
_PREFIX_RE = re.compile(rf"{_COMPONENT}(?:/{_COMPONENT})*")
_REGISTRY_KEYS = {
    "endpoints", "tag_ttl", "path_prefix", "ca_file", "client_cert", "client_key", "insecure",
    "max_concurrent", "requests_per_second", "requests_per_minute", "burst", "queue_size",
    "queue_timeout", "max_stale", "negative_ttl", "cooldown", "max_cooldown", "proxy",
}  # fmt: skip


def _path_prefix(value: object, key: str) -> str:
    if value is None or value == "":
        return ""
    prefix = _string(value, key).strip("/")
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
    return Path(_string(value, key)) if value is not None else None


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
    _reject_unknown(data, _REGISTRY_KEYS, key)
    raw = data.get("endpoints")
    if not isinstance(raw, list) or not raw:
        raise ConfigError(f"{key}.endpoints", "expected a non-empty list of URLs")
    default_prefix = _path_prefix(data.get("path_prefix"), f"{key}.path_prefix")
    endpoints: list[str] = []
    prefixes: list[str] = []
    for i, entry in enumerate(raw):
        where = f"{key}.endpoints[{i}]"
        if isinstance(entry, Mapping):
            _reject_unknown(entry, {"url", "path_prefix"}, where)
            endpoints.append(_endpoint(entry.get("url"), f"{where}.url"))
            own = entry.get("path_prefix")
            prefixes.append(
                default_prefix if own is None else _path_prefix(own, f"{where}.path_prefix")
            )
        else:
            endpoints.append(_endpoint(entry, where))
            prefixes.append(default_prefix)
    insecure = data.get("insecure", False)
    if not isinstance(insecure, bool):
        raise ConfigError(f"{key}.insecure", "expected true or false")
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
    cooldown = _positive(data.get("cooldown"), f"{key}.cooldown", 5.0)
    max_cooldown = _positive(data.get("max_cooldown"), f"{key}.max_cooldown", 300.0)
    if max_cooldown < cooldown:
        raise ConfigError(f"{key}.max_cooldown", "must be at least cooldown")
    return RegistryConfig(
        name=name,
        endpoints=tuple(endpoints),
        tag_ttl=parse_duration(data.get("tag_ttl", "60s"), f"{key}.tag_ttl"),
        path_prefixes=tuple(prefixes),
        ca_file=_optional_path(data.get("ca_file"), f"{key}.ca_file"),
        client_cert=client_cert,
        client_key=client_key,
        insecure=insecure,
        max_concurrent=_count(data.get("max_concurrent"), f"{key}.max_concurrent"),
        requests_per_second=_rate(data, key),
        burst=_count(data.get("burst"), f"{key}.burst") or 1,
        queue_size=_count(data.get("queue_size"), f"{key}.queue_size") or 256,
        queue_timeout=_positive(data.get("queue_timeout"), f"{key}.queue_timeout", 10.0),
        max_stale=parse_duration(data.get("max_stale", "7d"), f"{key}.max_stale"),
        negative_ttl=parse_duration(data.get("negative_ttl", "15s"), f"{key}.negative_ttl"),
        cooldown=cooldown,
        max_cooldown=max_cooldown,
        proxy=_proxy(data.get("proxy"), f"{key}.proxy"),
    )


def _proxy(value: object, key: str) -> str | None:
    if value is None:
        return None
    text = _string(value, key)
    return DIRECT if text == DIRECT else proxy_url(text, key)


def parse_config(data: object) -> Config:
    """Validate a configuration mapping (as read from YAML) into a ``Config``."""
    root = _mapping(data, "")
    _reject_unknown(
        root,
        {"listen", "admin", "storage", "default_registry", "registries", "timeouts", "log",
         "event_loop", "shutdown_grace", "prewarm", "credentials_file"},
        "",
    )  # fmt: skip
    listen = parse_listen(root.get("listen", "127.0.0.1:5000"), "listen")

    admin_raw = _mapping(root.get("admin"), "admin")
    _reject_unknown(admin_raw, {"listen", "token_file"}, "admin")
    token_file = admin_raw.get("token_file")
    admin = AdminConfig(
        listen=parse_listen(admin_raw.get("listen", "127.0.0.1:5050"), "admin.listen"),
        token_file=Path(_string(token_file, "admin.token_file")) if token_file else None,
    )
    if admin.listen == listen and listen.port != 0:
        raise ConfigError("admin.listen", "must differ from listen")

    storage_raw = _mapping(root.get("storage"), "storage")
    _reject_unknown(storage_raw, {"root", "max_size", "max_age", "sweep_interval"}, "storage")
    max_size = storage_raw.get("max_size")
    max_age = storage_raw.get("max_age")
    storage = StorageConfig(
        root=Path(_string(storage_raw.get("root", "/var/lib/cachesvc"), "storage.root")),
        max_size=parse_size(max_size, "storage.max_size") if max_size is not None else None,
        max_age=_positive(max_age, "storage.max_age", 0.0) if max_age is not None else None,
        sweep_interval=_positive(storage_raw.get("sweep_interval"), "storage.sweep_interval", 60.0),
    )

    prewarm_raw = _mapping(root.get("prewarm"), "prewarm")
    _reject_unknown(prewarm_raw, {"concurrency", "retention"}, "prewarm")
    concurrency = prewarm_raw.get("concurrency", 4)
    if (
        isinstance(concurrency, bool)
        or not isinstance(concurrency, int)
        or not 1 <= concurrency <= 64
    ):
        raise ConfigError("prewarm.concurrency", "expected a whole number from 1 to 64")
    prewarm = PrewarmConfig(
        concurrency=concurrency,
        retention=_positive(prewarm_raw.get("retention"), "prewarm.retention", 3600.0),
    )

    registries: dict[str, RegistryConfig] = {}
    for name, value in _mapping(root.get("registries"), "registries").items():
        key = f"registries.{name}"
        if not is_registry_host(name):
            raise ConfigError(key, "registry names are host or host:port, e.g. ghcr.io")
        registries[name] = _registry(name, _mapping(value, key), key)
    if not registries:
        raise ConfigError("registries", "configure at least one registry to mirror")

    default_registry = root.get("default_registry")
    if default_registry is not None:
        default_registry = _string(default_registry, "default_registry")
        if default_registry not in registries:
            raise ConfigError(
                "default_registry", f"{default_registry!r} is not one of the configured registries"
            )

    timeouts_raw = _mapping(root.get("timeouts"), "timeouts")
    _reject_unknown(timeouts_raw, {"connect", "first_byte", "stall"}, "timeouts")
    timeouts = Timeouts(
        connect=_positive(timeouts_raw.get("connect"), "timeouts.connect", 5.0),
        first_byte=_positive(timeouts_raw.get("first_byte"), "timeouts.first_byte", 30.0),
        stall=_positive(timeouts_raw.get("stall"), "timeouts.stall", 30.0),
    )

    log_raw = _mapping(root.get("log"), "log")
    _reject_unknown(log_raw, {"level", "format", "access_log"}, "log")
    level = str(log_raw.get("level", "info")).lower()
    if level not in ("debug", "info", "warning", "error"):
        raise ConfigError("log.level", "expected one of debug, info, warning, error")
    fmt = str(log_raw.get("format", "json")).lower()
    if fmt not in ("json", "text"):
        raise ConfigError("log.format", "expected json or text")
    access_log = log_raw.get("access_log", True)
    if not isinstance(access_log, bool):
        raise ConfigError("log.access_log", "expected true or false")

    event_loop = root.get("event_loop", "asyncio")
    if event_loop not in ("asyncio", "uvloop"):
        raise ConfigError("event_loop", "expected asyncio or uvloop")

    return Config(
        listen=listen,
        admin=admin,
        storage=storage,
        default_registry=default_registry,
        registries=registries,
        timeouts=timeouts,
        log=LogConfig(level=level, format=fmt, access_log=access_log),
        event_loop=event_loop,
        shutdown_grace=_positive(root.get("shutdown_grace"), "shutdown_grace", 20.0),
        prewarm=prewarm,
        credentials_file=_optional_path(root.get("credentials_file"), "credentials_file"),
    )


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
