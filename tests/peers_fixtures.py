"""Building blocks for the end-to-end tests against the real peers.

- :class:`CachesvcProcess`: ``python -m cachesvc serve --config FILE`` as a child process on
  free loopback ports, storage under a temp directory; metrics scraped from ``/metrics``,
  the JSON access log read from its stderr. Always stopped by its context manager.
- :class:`ThrottleProxy`: a tiny aiohttp reverse proxy that forwards to an upstream registry
  and, while ``throttled``, dribbles response bodies out slowly (to catch a fill mid-way).
- fixtures: the real distribution registry, a private containerd (root), peer checks.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import signal
import sys
import time
import urllib.request
from collections.abc import AsyncIterator, Iterator, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, Self

import aiohttp
import pytest
import yaml
from aiohttp import web
from prometheus_client.parser import text_string_to_metric_families

from cachesvc.logs import FLUSH_SECONDS
from tests.peers.containerd import Containerd
from tests.peers.ports import LOOPBACK, free_port, http_answers
from tests.peers.process import ManagedProcess, StartStop, start_until_ready
from tests.peers.registry import DistributionRegistry
from tests.peers.require import require

REPO_ROOT = Path(__file__).resolve().parent.parent
MiB = 1024 * 1024


# -- peer checks and shared fixtures ---------------------------------------------------------


def require_registry_and_skopeo() -> None:
    """Skip (locally) or fail (CI=true) when the registry or skopeo is missing."""
    require("docker-registry", "docker-registry")
    require("skopeo", "skopeo")


def require_containerd() -> None:
    """containerd + ctr installed, and root to run them."""
    require("containerd", "containerd")
    require("ctr", "containerd")
    if os.geteuid() != 0:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail("containerd tests need root", pytrace=False)
        pytest.skip("containerd tests need root")


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DistributionRegistry]:
    """The real distribution registry, empty, for the tests of one module."""
    require_registry_and_skopeo()
    with DistributionRegistry(tmp_path_factory.mktemp("registry")) as reg:
        yield reg


@pytest.fixture(scope="module")
def containerd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Containerd]:
    """A private containerd; tests ``reset()`` it when they are done with their images."""
    require_containerd()
    with Containerd(tmp_path_factory.mktemp("containerd")) as ctd:
        yield ctd


def sha256_file(path: Path) -> str:
    """``sha256:<hex>`` of a file, read in chunks."""
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(MiB):
            h.update(chunk)
    return "sha256:" + h.hexdigest()


async def get_sha256(session: aiohttp.ClientSession, url: str) -> tuple[int, int, str]:
    """GET ``url`` streaming: (status, body size, ``sha256:<hex>`` of the body)."""
    h = hashlib.sha256()
    size = 0
    async with session.get(url) as resp:
        async for chunk in resp.content.iter_chunked(MiB):
            h.update(chunk)
            size += len(chunk)
        return resp.status, size, "sha256:" + h.hexdigest()


def wait_until_quiet(reg: DistributionRegistry, settle: float = 0.3, timeout: float = 5.0) -> int:
    """Wait until the registry's access log stops growing for ``settle`` s; its line count."""
    deadline = time.monotonic() + timeout
    last = len(reg.access_log())
    quiet_since = time.monotonic()
    while time.monotonic() < deadline:
        time.sleep(0.05)
        now = len(reg.access_log())
        if now != last:
            last, quiet_since = now, time.monotonic()
        elif time.monotonic() - quiet_since >= settle:
            break
    return last


# -- cachesvc as a process -------------------------------------------------------------------


class CachesvcStartError(RuntimeError):
    """The daemon exited or did not become ready; the message carries its log tail."""


class CachesvcProcess(StartStop):
    """``python -m cachesvc serve --config FILE`` on free loopback ports; a context manager.

    ``registries`` maps registry names to endpoint URL lists; ``storage`` persists across
    :meth:`restart` (that is the point of a crash test). ``extra`` is merged into the config;
    ``env`` is added to the daemon's environment (e.g. ``HTTPS_PROXY``).
    """

    def __init__(
        self,
        workdir: Path,
        registries: Mapping[str, list[str]],
        *,
        default_registry: str | None = None,
        storage: Path | None = None,
        extra: Mapping[str, Any] | None = None,
        env: Mapping[str, str] | None = None,
        startup_timeout: float = 15.0,
    ) -> None:
        self.workdir = workdir
        self.env = dict(env or {})
        self.registries = dict(registries)
        self.default_registry = default_registry or next(iter(self.registries))
        self.storage = storage or workdir / "storage"
        self.extra = dict(extra or {})
        self.startup_timeout = startup_timeout
        self.mirror_port = 0
        self.admin_port = 0
        self._process: ManagedProcess | None = None
        self._starts = 0

    @property
    def mirror_url(self) -> str:
        return f"http://{LOOPBACK}:{self.mirror_port}"

    @property
    def mirror_host(self) -> str:
        return f"{LOOPBACK}:{self.mirror_port}"

    @property
    def admin_url(self) -> str:
        return f"http://{LOOPBACK}:{self.admin_port}"

    @property
    def config_path(self) -> Path:
        return self.workdir / "cachesvc.yaml"

    @property
    def log_path(self) -> Path:
        return self.workdir / "cachesvc.log"

    @property
    def tmp_dir(self) -> Path:
        """Where fills in progress live (``<storage>/tmp``)."""
        return self.storage / "tmp"

    def blob_path(self, digest: str) -> Path:
        """The final (verified) path of a blob, as the store lays it out."""
        algorithm, _, hexdigest = digest.partition(":")
        return self.storage / "blobs" / algorithm / hexdigest[:2] / hexdigest

    @property
    def pid(self) -> int:
        assert self._process is not None
        return self._process.pid

    def config(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "listen": f"{LOOPBACK}:{self.mirror_port}",
            "admin": {"listen": f"{LOOPBACK}:{self.admin_port}"},
            "storage": {"root": str(self.storage)},
            "default_registry": self.default_registry,
            "registries": {
                name: {"endpoints": list(endpoints), "tag_ttl": "60s"}
                for name, endpoints in self.registries.items()
            },
            "log": {"level": "info", "format": "json", "access_log": True},
            "timeouts": {"connect": "2s", "first_byte": "10s", "stall": "10s"},
            "shutdown_grace": "2s",
        }
        data.update(self.extra)
        return data

    def start(self) -> None:
        if self._process is not None:
            raise RuntimeError("cachesvc already running")
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._process = start_until_ready(
            self._launch,
            lambda: (
                http_answers(self.admin_url + "/readyz", ok_statuses=frozenset({200}))
                and http_answers(self.mirror_url + "/v2/", ok_statuses=frozenset({200}))
            ),
            name="cachesvc",
            timeout=self.startup_timeout,
            error=CachesvcStartError,
            attempts=3,
        )

    def _launch(self) -> ManagedProcess:
        self.mirror_port = free_port()
        self.admin_port = free_port()
        while self.admin_port == self.mirror_port:
            self.admin_port = free_port()
        self.config_path.write_text(yaml.safe_dump(self.config()))
        self._starts += 1
        with self.log_path.open("a") as log:
            log.write(f"\n=== start {self._starts} ===\n")
        # Neither the runner's CACHESVC_* nor its proxy variables: loopback stays direct.
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith("CACHESVC_") and not k.lower().endswith("_proxy")
        }
        env.update(self.env)
        return ManagedProcess(
            [sys.executable, "-m", "cachesvc", "serve", "--config", str(self.config_path)],
            stdout_path=self.workdir / "cachesvc.stdout",
            stderr_path=self.log_path,
            env=env,
            cwd=REPO_ROOT,
        )

    def stop(self) -> None:
        """Graceful stop (SIGTERM, then SIGKILL); idempotent."""
        proc, self._process = self._process, None
        if proc is not None:
            proc.stop(grace=5.0)

    def returncode(self) -> int | None:
        """None while the daemon runs, else its exit status."""
        assert self._process is not None
        return self._process.returncode()

    def kill9(self) -> None:
        """SIGKILL the daemon, as a node crash or OOM kill would, and reap it."""
        proc = self._process
        assert proc is not None
        os.kill(proc.pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while proc.returncode() is None:
            if time.monotonic() > deadline:
                raise RuntimeError("cachesvc survived SIGKILL")
            time.sleep(0.01)
        self.stop()  # closes the log files; nothing left to signal

    def restart(self) -> None:
        self.stop()
        self.start()

    def describe(self) -> str:
        return self._process.describe() if self._process else f"(stopped) log: {self.log_path}"

    # -- observation -------------------------------------------------------------------------

    def metrics_text(self) -> str:
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        with opener.open(self.admin_url + "/metrics", timeout=5) as resp:
            text: str = resp.read().decode()
            return text

    def metric(self, name: str, **labels: str) -> float:
        """Sum of the samples of ``name`` whose labels include ``labels`` (0 when none)."""
        total = 0.0
        for family in text_string_to_metric_families(self.metrics_text()):
            for sample in family.samples:
                if sample.name == name and all(
                    sample.labels.get(k) == v for k, v in labels.items()
                ):
                    total += sample.value
        return total

    def access_log(self) -> list[dict[str, Any]]:
        """The daemon's access-log lines (every start), parsed, oldest first.

        The daemon buffers log output and flushes it every ``FLUSH_SECONDS``: give the
        last lines time to land before reading.
        """
        time.sleep(2 * FLUSH_SECONDS)
        entries = []
        try:
            text = self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return []
        for line in text.splitlines():
            if not line.startswith("{"):
                continue
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if record.get("logger") == "cachesvc.access":
                entries.append(record)
        return entries


# -- a throttling reverse proxy ----------------------------------------------------------------

_HOP_BY_HOP = {
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailers",
    "transfer-encoding",
    "upgrade",
    "host",
    "content-length",
}


class ThrottleProxy:
    """Forwards every request to ``upstream``; while ``throttled``, response bodies flow in
    ``chunk`` byte pieces with ``delay`` seconds between them. Counts requests by path."""

    def __init__(self, upstream: str, *, chunk: int = 256 * 1024, delay: float = 0.02) -> None:
        self.upstream = upstream.rstrip("/")
        self.chunk = chunk
        self.delay = delay
        self.throttled = True
        self.requests: list[tuple[str, str]] = []
        self.url = ""
        self._session: aiohttp.ClientSession | None = None

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        assert self._session is not None
        self.requests.append((request.method, request.path))
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP_BY_HOP}
        async with self._session.request(
            request.method,
            self.upstream + request.path_qs,
            headers=headers,
            data=await request.read() if request.can_read_body else None,
            allow_redirects=False,
        ) as upstream:
            out_headers = {
                k: v for k, v in upstream.headers.items() if k.lower() not in _HOP_BY_HOP
            }
            response = web.StreamResponse(status=upstream.status, headers=out_headers)
            if upstream.content_length is not None:
                response.content_length = upstream.content_length
            await response.prepare(request)
            try:
                if request.method != "HEAD":
                    async for data in upstream.content.iter_chunked(self.chunk):
                        if self.throttled:
                            await asyncio.sleep(self.delay)
                        await response.write(data)
                await response.write_eof()
            except ConnectionError:
                pass  # the client went away (a killed cachesvc): drop the upstream body too
            return response

    @asynccontextmanager
    async def running(self) -> AsyncIterator[Self]:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await runner.setup()
        async with aiohttp.ClientSession(auto_decompress=False, trust_env=False) as session:
            self._session = session
            try:
                site = web.TCPSite(runner, LOOPBACK, 0)
                await site.start()
                host, port = runner.addresses[0][:2]
                self.url = f"http://{host}:{port}"
                yield self
            finally:
                await runner.cleanup()
                self._session = None
