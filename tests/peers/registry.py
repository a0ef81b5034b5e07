"""The CNCF distribution registry (Debian ``docker-registry``) on a loopback port.

Two roles: a plain upstream registry that tests push images into, and the proxy
(pull-through cache) mode configured with ``proxy.remoteurl``, the baseline cachesvc competes
with.

Request counting: the registry writes an access log in Apache combined format to stdout, one
line per HTTP request once its response has finished::

    127.0.0.1 - - [26/Nov/2026:07:16:07 +0000] "GET /v2/r/blobs/sha256:.. HTTP/1.1" 200 5 "" "curl"

(the third field is always ``-``: it comes from URL userinfo, not from Basic auth).
stdout goes to ``access.log`` and is parsed by :meth:`DistributionRegistry.access_log`;
the application log (logrus text, stderr) goes to ``registry.log``.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import bcrypt

from .ports import LOOPBACK, free_port, http_answers
from .process import ManagedProcess, StartStop, start_until_ready

__all__ = [
    "REGISTRY_BINARY",
    "AccessLogEntry",
    "BasicAuth",
    "DistributionRegistry",
    "RegistryStartError",
    "TLSFiles",
    "blob_path",
    "htpasswd_line",
    "manifest_path",
    "parse_access_log_line",
]

REGISTRY_BINARY = "/usr/bin/docker-registry"

_ACCESS_LINE = re.compile(
    r"^(?P<remote>\S+) \S+ (?P<user>\S+) \[(?P<time>[^\]]+)\] "
    r'"(?P<method>[A-Z]+) (?P<uri>\S+) (?P<proto>[^"]+)" (?P<status>\d{3}) (?P<size>\d+|-)'
    r'(?: "(?P<referer>[^"]*)" "(?P<user_agent>[^"]*)")?'
)


@dataclass(frozen=True, slots=True)
class BasicAuth:
    """A username and password: htpasswd auth for the registry, or proxy upstream credentials."""

    username: str
    password: str


@dataclass(frozen=True, slots=True)
class TLSFiles:
    """A PEM certificate chain and its private key, as files (trustme writes them)."""

    cert: Path
    key: Path


@dataclass(frozen=True, slots=True)
class AccessLogEntry:
    """One request from the registry's access log."""

    method: str
    uri: str
    """Path plus query string, as received (e.g. ``/v2/r/blobs/sha256:..?ns=docker.io``)."""
    status: int
    size: int
    user: str
    """The user field; ``-`` in practice (the registry does not log Basic-auth users)."""
    user_agent: str

    @property
    def path(self) -> str:
        """The URI without its query string."""
        return urlsplit(self.uri).path

    @property
    def query(self) -> str:
        """The raw query string ('' when there is none)."""
        return urlsplit(self.uri).query


def parse_access_log_line(line: str) -> AccessLogEntry | None:
    """Parse one combined-format line; None for anything else."""
    m = _ACCESS_LINE.match(line)
    if m is None:
        return None
    size = m["size"]
    return AccessLogEntry(
        method=m["method"],
        uri=m["uri"],
        status=int(m["status"]),
        size=0 if size == "-" else int(size),
        user=m["user"],
        user_agent=m["user_agent"] or "",
    )


def blob_path(repository: str, digest: str) -> str:
    """``/v2/<repository>/blobs/<digest>``, as a regex matching exactly that path."""
    return re.escape(f"/v2/{repository}/blobs/{digest}")


def manifest_path(repository: str, reference: str) -> str:
    """``/v2/<repository>/manifests/<reference>``, as a regex matching exactly that path."""
    return re.escape(f"/v2/{repository}/manifests/{reference}")


def htpasswd_line(username: str, password: str, rounds: int = 4) -> str:
    """An htpasswd line with a bcrypt hash (the only scheme the registry accepts).

    ``rounds`` 4 is bcrypt's minimum: cheap for tests, where every request is verified.
    """
    hashed = bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=rounds)).decode()
    return f"{username}:{hashed}"


class RegistryStartError(RuntimeError):
    """The registry exited or did not answer in time; the message carries its logs."""


class DistributionRegistry(StartStop):
    """``docker-registry serve CONFIG`` on 127.0.0.1, state under ``workdir``.

    Use as a context manager; ``url`` / ``host_port`` are valid inside it.

    ``proxy_remote_url`` switches on proxy (pull-through) mode; ``proxy_auth`` are the
    credentials it uses upstream. ``auth`` turns on htpasswd Basic auth for clients. ``tls``
    serves https with the given certificate. ``env`` adds to the registry's environment (for
    example ``SSL_CERT_FILE`` so that proxy mode trusts a test CA upstream).
    """

    def __init__(
        self,
        workdir: Path,
        *,
        proxy_remote_url: str | None = None,
        proxy_auth: BasicAuth | None = None,
        auth: BasicAuth | None = None,
        tls: TLSFiles | None = None,
        port: int | None = None,
        env: Mapping[str, str] | None = None,
        binary: str = REGISTRY_BINARY,
        startup_timeout: float = 15.0,
    ) -> None:
        self.workdir = workdir
        self.proxy_remote_url = proxy_remote_url
        self.proxy_auth = proxy_auth
        self.auth = auth
        self.tls = tls
        self._requested_port = port
        self._env = dict(env or {})
        self._binary = binary
        self._startup_timeout = startup_timeout
        self._port: int | None = None
        self._process: ManagedProcess | None = None

    # -- addresses -------------------------------------------------------------------------

    @property
    def port(self) -> int:
        """The TCP port it listens on (valid once started)."""
        if self._port is None:
            raise RuntimeError("registry not started")
        return self._port

    @property
    def host_port(self) -> str:
        """``127.0.0.1:PORT``: the registry host part of image references."""
        return f"{LOOPBACK}:{self.port}"

    @property
    def url(self) -> str:
        """``http://127.0.0.1:PORT`` (``https`` with TLS), without a trailing slash."""
        scheme = "https" if self.tls else "http"
        return f"{scheme}://{self.host_port}"

    def ref(self, repository: str, tag_or_digest: str) -> str:
        """An image reference on this registry: ``127.0.0.1:PORT/repo:tag`` or ``...@sha256:..``."""
        sep = "@" if ":" in tag_or_digest else ":"
        return f"{self.host_port}/{repository}{sep}{tag_or_digest}"

    # -- files -----------------------------------------------------------------------------

    @property
    def config_path(self) -> Path:
        """The generated config file."""
        return self.workdir / "config.yml"

    @property
    def storage_dir(self) -> Path:
        """Filesystem storage root of the registry."""
        return self.workdir / "storage"

    @property
    def access_log_path(self) -> Path:
        """Access log (combined format, stdout of the registry)."""
        return self.workdir / "access.log"

    @property
    def log_path(self) -> Path:
        """Application log (logrus text, stderr of the registry)."""
        return self.workdir / "registry.log"

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> None:
        """Write the config, start the registry, and wait until ``/v2/`` answers.

        A port taken between choosing and binding is retried with a new port (twice).
        """
        if self._process is not None:
            raise RuntimeError("registry already started")
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.storage_dir.mkdir(exist_ok=True)
        self._process = start_until_ready(
            self._launch,
            lambda: http_answers(self.url + "/v2/"),
            name="registry",
            timeout=self._startup_timeout,
            error=RegistryStartError,
            attempts=1 if self._requested_port is not None else 3,
        )

    def stop(self) -> None:
        """Stop the registry (idempotent). Storage and logs stay for inspection."""
        proc, self._process = self._process, None
        if proc is not None:
            proc.stop()

    # -- access log --------------------------------------------------------------------------

    def access_log(self) -> list[AccessLogEntry]:
        """Every request logged so far, oldest first."""
        try:
            text = self.access_log_path.read_text(errors="replace")
        except FileNotFoundError:
            return []
        entries = (parse_access_log_line(line) for line in text.splitlines())
        return [e for e in entries if e is not None]

    def requests(
        self, method: str, path_pattern: str | re.Pattern[str], *, status: int | None = None
    ) -> list[AccessLogEntry]:
        """Logged requests whose method equals ``method`` (case-insensitive) and whose path
        (query string excluded) fully matches the regex ``path_pattern``; optionally only with
        response ``status``. Use :func:`blob_path` / :func:`manifest_path` for exact paths."""
        pattern = re.compile(path_pattern) if isinstance(path_pattern, str) else path_pattern
        wanted = method.upper()
        return [
            e
            for e in self.access_log()
            if e.method == wanted
            and pattern.fullmatch(e.path) is not None
            and (status is None or e.status == status)
        ]

    def count_requests(
        self, method: str, path_pattern: str | re.Pattern[str], *, status: int | None = None
    ) -> int:
        """How many logged requests :meth:`requests` selects."""
        return len(self.requests(method, path_pattern, status=status))

    def wait_for_requests(
        self,
        method: str,
        path_pattern: str | re.Pattern[str],
        at_least: int,
        *,
        status: int | None = None,
        timeout: float = 5.0,
    ) -> int:
        """Wait until at least ``at_least`` matching requests are logged; return the count.

        The registry logs a request after its response is written, which can be a moment after
        the client saw the last byte. Returns the count reached at ``timeout`` without raising.
        """
        deadline = time.monotonic() + timeout
        while True:
            n = self.count_requests(method, path_pattern, status=status)
            if n >= at_least or time.monotonic() >= deadline:
                return n
            time.sleep(0.02)

    def count_blob_gets(self, repository: str, digest: str) -> int:
        """Number of ``GET /v2/<repository>/blobs/<digest>`` requests (any status)."""
        return self.count_requests("GET", blob_path(repository, digest))

    # -- internals -------------------------------------------------------------------------

    def _config(self) -> dict[str, object]:
        http: dict[str, object] = {
            "addr": self.host_port,
            "secret": secrets.token_hex(16),
            "headers": {"X-Content-Type-Options": ["nosniff"]},
        }
        if self.tls is not None:
            http["tls"] = {"certificate": str(self.tls.cert), "key": str(self.tls.key)}
        config: dict[str, object] = {
            "version": 0.1,
            "log": {"level": "info", "formatter": "text", "accesslog": {"disabled": False}},
            "storage": {
                "filesystem": {"rootdirectory": str(self.storage_dir)},
                "delete": {"enabled": True},
                "cache": {"blobdescriptor": "inmemory"},
                "maintenance": {"uploadpurging": {"enabled": False}},
            },
            "http": http,
        }
        if self.auth is not None:
            htpasswd = self.workdir / "htpasswd"
            htpasswd.write_text(htpasswd_line(self.auth.username, self.auth.password) + "\n")
            config["auth"] = {"htpasswd": {"realm": "cachesvc-test", "path": str(htpasswd)}}
        if self.proxy_remote_url is not None:
            proxy: dict[str, str] = {"remoteurl": self.proxy_remote_url}
            if self.proxy_auth is not None:
                proxy["username"] = self.proxy_auth.username
                proxy["password"] = self.proxy_auth.password
            config["proxy"] = proxy
        # The file is named .yml; JSON is valid YAML, and avoids a YAML dependency here.
        return config

    def _child_env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.upper().startswith("REGISTRY_")}
        # No proxy from the environment may divert proxy-mode upstream traffic.
        for key in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY"):
            env.pop(key, None)
        env.update(self._env)
        return env

    def _launch(self) -> ManagedProcess:
        self._port = self._requested_port or free_port()
        self.config_path.write_text(json.dumps(self._config(), indent=2))
        return ManagedProcess(
            [self._binary, "serve", str(self.config_path)],
            stdout_path=self.access_log_path,
            stderr_path=self.log_path,
            env=self._child_env(),
        )
