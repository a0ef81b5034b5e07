"""The typed, frozen configuration values (what ``cachesvc.config.parse`` produces).

``Config`` only stores values; every default and what "unset" means is documented beside
its field, and written only there: ``parse`` takes its defaults from these fields, and
tests/test_config.py checks that the tables in README.md and docs/ say the same.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # config.cluster parses with config.values, which imports this module
    from cachesvc.config.cluster import ClusterConfig

from cachesvc.policy.clients import ClientAllowList
from cachesvc.policy.repositories import RepositoryAllowList


@dataclass(frozen=True, slots=True)
class ListenAddress:
    """A host and port to bind; ``host`` may be an IPv6 literal without brackets."""

    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


@dataclass(frozen=True, slots=True)
class Timeouts:
    """Timeouts in seconds: upstream ones, then the two for clients of both listeners.

    ``connect``: TCP + TLS handshake per endpoint. ``first_byte``: from sending the
    request to the response headers, and the *total* deadline of a small body read whole
    (manifests, tag lists, token answers, error bodies). ``stall``: longest gap between two
    body reads of a fill before it is abandoned (blobs only: it never caps ``first_byte``).
    ``client_header``: a client's request line and headers must arrive within this
    (slowloris). ``client_idle``: an idle keep-alive client connection is closed after this.
    """

    connect: float = 5.0
    first_byte: float = 30.0
    stall: float = 30.0
    client_header: float = 10.0
    client_idle: float = 60.0


@dataclass(frozen=True, slots=True)
class VerifyConfig:
    """``registries.<name>.verify``: serve a manifest only if one of ``keys`` signed it.

    ``keys``: cosign public key files (PEM), each readable and of a supported type at load
    (checked by the parser), re-read by the daemon when they change. ``mode``: ``enforce``
    refuses with 403; ``warn`` serves and logs what it would have refused.
    """

    keys: tuple[Path, ...]
    mode: str = "enforce"


@dataclass(frozen=True, slots=True)
class ClientsConfig:
    """``clients``: who may use the mirror API. ``allow`` unset: every client."""

    allow: ClientAllowList | None = None


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
      (``cachesvc.upstream.egress``); ``direct`` ignores ``HTTPS_PROXY``/``HTTP_PROXY``.
    - ``redirect_private``: redirects (and token services) on a host that is not one of the
      endpoints' may resolve to loopback/private addresses (``cachesvc.upstream.addresses``);
      false: public addresses only. Link-local, unspecified and multicast: never.
    - ``credential_endpoints``: indexes of endpoints marked ``credentials: true``; the
      registry's credentials go only to those, the last endpoint (the origin), hosts with
      their own ``auths`` entry, and token services those name (``upstream.auth``).
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
    redirect_private: bool = False
    credential_endpoints: frozenset[int] = frozenset()
    allow: RepositoryAllowList | None = None  # repositories that may be fetched; unset: all
    verify: VerifyConfig | None = None  # signature verification; unset: none

    @property
    def under_policy(self) -> bool:
        """Whether ``allow`` or ``verify`` is set (then hosts.toml has no path around us)."""
        return self.allow is not None or self.verify is not None

    def path_prefix(self, index: int) -> str:
        """The repository prefix of ``endpoints[index]`` (``""`` when none)."""
        return self.path_prefixes[index] if index < len(self.path_prefixes) else ""


@dataclass(frozen=True, slots=True)
class AdminConfig:
    """The admin listener: /metrics, /healthz, /readyz and /admin/v1."""

    listen: ListenAddress = ListenAddress("127.0.0.1", 5050)
    token_file: Path | None = None  # unset: the /admin/v1 API answers 403


@dataclass(frozen=True, slots=True)
class DiskShare:
    """An amount of disk: ``bytes``, or ``percent`` of the filesystem holding storage.root.

    A percentage is resolved against the filesystem's size when it is used (the store may
    live on a volume that is resized), never at load time, when the root may not exist yet.
    """

    bytes: int | None = None
    percent: float | None = None

    def of(self, filesystem_bytes: int) -> int:
        """This share in bytes of a filesystem of ``filesystem_bytes``."""
        if self.bytes is not None:
            return self.bytes
        return int(filesystem_bytes * (self.percent or 0.0) / 100)


@dataclass(frozen=True, slots=True)
class StorageConfig:
    """Where blobs, manifests, temp files and the index live.

    ``max_size`` bounds the store itself: bytes in ``max_size``, or ``max_size_percent`` of
    its filesystem (``size_limit`` resolves either). ``min_free`` bounds the filesystem:
    eviction keeps at least that much free on it, whatever else lives there (unset: no
    free-space bound). Either one starts the eviction watch.
    """

    root: Path = Path("/var/lib/cachesvc")
    max_size: int | None = None  # bytes; unset: no size bound (size eviction off)
    max_age: float | None = None  # seconds since last access; unset: no age limit
    sweep_interval: float = 60.0  # seconds between full eviction sweeps of the store
    max_size_percent: float | None = None  # storage.max_size given as "N%"; max_size is None
    min_free: DiskShare | None = None  # unset: eviction ignores the filesystem's free space

    scrub_rate: int = 16 * 1024 * 1024  # bytes/s the background scrub hashes; 0: no scrub
    scrub_interval: float = 86400.0  # seconds between scrub passes (store/scrub.py)

    def size_limit(self, filesystem_bytes: int) -> int | None:
        """``storage.max_size`` in bytes on a filesystem of ``filesystem_bytes`` (None: unset)."""
        if self.max_size_percent is not None:
            return DiskShare(percent=self.max_size_percent).of(filesystem_bytes)
        return self.max_size


@dataclass(frozen=True, slots=True)
class PrewarmConfig:
    """Prewarm jobs: how many blobs they fetch at once and how long finished jobs stay."""

    concurrency: int = 4  # blob fetches at once, across all jobs
    retention: float = 3600.0  # seconds a finished job stays visible in /admin/v1/jobs


@dataclass(frozen=True, slots=True)
class LogConfig:
    """Log level and format (``json`` lines or ``text``)."""

    level: str = "info"
    format: str | None = None  # unset: text when stderr is a terminal, else json
    access_log: bool = True


@dataclass(frozen=True, slots=True)
class Config:
    """The whole daemon configuration; built once by the CLI and passed down."""

    listen: ListenAddress = ListenAddress("127.0.0.1", 5000)
    admin: AdminConfig = field(default_factory=AdminConfig)
    storage: StorageConfig = field(default_factory=StorageConfig)
    # Requests with neither ``ns=`` nor a registry path prefix; unset: 404 NAME_UNKNOWN.
    # Only the embedded default (``DEFAULT_CONFIG_YAML``) sets docker.io.
    default_registry: str | None = None
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
    # ``cluster:`` (cachesvc.config.cluster); unset: this daemon is an island (no peer API).
    cluster: ClusterConfig | None = None
    # The node's containerd wiring check (``ContainerdCheck``, defined below); off by default.
    containerd: ContainerdCheck = field(default_factory=lambda: ContainerdCheck())
    clients: ClientsConfig = field(default_factory=ClientsConfig)

    # Client connections open at once, per listener (mirror and admin); beyond: refused, logged.
    max_connections: int = 1024


@dataclass(frozen=True, slots=True)
class ContainerdCheck:
    """Where the daemon looks to tell whether containerd on its node is wired to it.

    ``config``: containerd's ``config.toml`` as mounted into the daemon (unset: the check
    is off, ``/readyz`` says so and ``cachesvc_containerd_wired`` stays 0). Paths found in
    it are node paths, read under ``host_root``. ``version`` (major, minor) of the node's
    containerd matters only without ``config_path`` (2.2 reads /etc/containerd/certs.d by
    default); unset: treated as older. ``interval``: seconds between two checks.
    """

    config: Path | None = None
    host_root: Path = Path("/")
    version: tuple[int, int] | None = None
    interval: float = 30.0
