"""The systems under test and their peers, each a child process on a free loopback port.

- upstream: the distribution registry holding the test images (the "real registry"), with its
  access log on so that upstream requests can be counted (see ``access_log``);
- distribution: the distribution registry in proxy mode (the baseline);
- cachesvc: the daemon under test, when it can be run, with the default event loop (asyncio);
- cachesvc-uvloop: the same configuration plus ``event_loop: uvloop`` (for comparison);
- cachesvc-before: the same configuration, run from an older revision's tree (``--before``);
- nginx: static files with ``sendfile on`` (the ceiling for a hit).
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from benchmarks.ports import LOOPBACK, free_port
from benchmarks.processes import Child
from benchmarks.revision import python_env

REPO_ROOT = Path(__file__).resolve().parent.parent
REGISTRY_BINARY = "docker-registry"
NGINX_BINARY = "nginx"

EventLoop = Literal["asyncio", "uvloop"]
"""cachesvc's ``event_loop`` config key."""


@dataclass(frozen=True, slots=True)
class Service:
    """A started child and the base URL it serves on."""

    name: str
    host: str
    child: Child

    @property
    def url(self) -> str:
        """``http://host:port`` without a trailing slash."""
        return f"http://{self.host}"

    def stop(self) -> None:
        """Stop the child process."""
        self.child.stop()


def start_registry(
    name: str, workdir: Path, remote_url: str | None = None, access_log: bool = False
) -> Service:
    """The distribution registry; with ``remote_url`` it runs in pull-through proxy mode.

    Its stdout and stderr go to ``<workdir>/<name>.log``; with ``access_log`` that includes one
    line per request.
    """
    port = free_port()
    root = workdir / f"{name}-storage"
    root.mkdir(parents=True)
    lines = [
        "version: 0.1",
        "log:",
        "  level: error",
        "  accesslog:",
        f"    disabled: {'false' if access_log else 'true'}",
        "storage:",
        "  cache:",
        "    blobdescriptor: inmemory",
        "  filesystem:",
        f"    rootdirectory: {root}",
        "  delete:",
        "    enabled: true",
        "http:",
        f"  addr: {LOOPBACK}:{port}",
    ]
    if remote_url is not None:
        lines += ["proxy:", f"  remoteurl: {remote_url}"]
    config = workdir / f"{name}.yml"
    config.write_text("\n".join(lines) + "\n")
    child = Child(name, [REGISTRY_BINARY, "serve", str(config)], workdir / f"{name}.log")
    service = Service(name, f"{LOOPBACK}:{port}", child)
    _ready(service, f"{service.url}/v2/")
    return service


def start_nginx(workdir: Path, root: Path) -> Service:
    """nginx serving the files under ``root`` with sendfile on, one worker, no access log."""
    port = free_port()
    base = workdir / "nginx"
    base.mkdir()
    temp_paths = "\n".join(
        f"  {kind}_temp_path {base / kind};"
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    config = base / "nginx.conf"
    config.write_text(
        f"""
worker_processes 1;
pid {base / "nginx.pid"};
error_log {base / "error.log"} warn;
events {{ worker_connections 1024; }}
http {{
  access_log off;
  sendfile on;
  tcp_nopush on;
  keepalive_requests 100000;
  default_type application/octet-stream;
{temp_paths}
  server {{
    listen {LOOPBACK}:{port};
    root {root};
    location / {{ }}
  }}
}}
"""
    )
    user_line = ["-g", "daemon off; user root;"] if os.geteuid() == 0 else ["-g", "daemon off;"]
    child = Child(
        "nginx",
        [NGINX_BINARY, "-c", str(config), "-p", str(base), *user_line],
        base / "stdout.log",
    )
    service = Service("nginx", f"{LOOPBACK}:{port}", child)
    _ready(service, f"{service.url}/", ok_status=403)  # a directory without an index
    return service


def cachesvc_unavailable_reason(source_root: Path = REPO_ROOT) -> str | None:
    """None when ``python -m cachesvc serve --help`` works, otherwise why not.

    ``source_root`` is the tree whose ``cachesvc`` runs (an older revision's, for ``--before``).
    """
    try:
        result = subprocess.run(
            [sys.executable, "-m", "cachesvc", "serve", "--help"],
            capture_output=True,
            timeout=30,
            cwd=source_root,
            env=python_env(source_root),
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"cannot run: {exc}"
    if result.returncode != 0:
        last = (result.stderr or result.stdout).decode(errors="replace").strip().splitlines()
        return last[-1] if last else f"exit {result.returncode}"
    return None


def write_cachesvc_config(
    workdir: Path,
    name: str,
    storage_root: Path,
    upstream: Service,
    event_loop: EventLoop | None = None,
) -> tuple[Path, int, int]:
    """Write a cachesvc YAML config; returns (path, mirror port, admin port).

    Without ``event_loop`` the key is left out, so cachesvc runs on its default loop.
    """
    port, admin_port = free_port(), free_port()
    config = workdir / f"{name}.yml"
    config.write_text(
        "\n".join(
            [
                f'listen: "{LOOPBACK}:{port}"',
                *([f"event_loop: {event_loop}"] if event_loop is not None else []),
                "admin:",
                f'  listen: "{LOOPBACK}:{admin_port}"',
                "storage:",
                f'  root: "{storage_root}"',
                f'default_registry: "{upstream.host}"',
                "registries:",
                f'  "{upstream.host}":',
                f'    endpoints: ["{upstream.url}"]',
                '    tag_ttl: "60s"',
                "",
            ]
        )
    )
    return config, port, admin_port


def spawn_cachesvc(workdir: Path, name: str, config: Path, source_root: Path = REPO_ROOT) -> Child:
    """Start cachesvc without waiting for it (the start-up scenario times readiness itself).

    It runs the ``cachesvc`` package under ``source_root`` (this checkout unless told).
    """
    return Child(
        name,
        [sys.executable, "-m", "cachesvc", "serve", "--config", str(config)],
        workdir / f"{name}.log",
        env=python_env(source_root),
        cwd=source_root,
    )


def start_cachesvc(
    workdir: Path,
    upstream: Service,
    name: str = "cachesvc",
    event_loop: EventLoop | None = None,
    source_root: Path = REPO_ROOT,
) -> Service:
    """cachesvc with a fresh storage root, pulling from ``upstream``.

    ``event_loop`` sets the config key of that name; None keeps cachesvc's default (asyncio).
    ``source_root`` is the tree it runs from (an older revision's export for ``--before``).
    """
    storage = workdir / f"{name}-storage"
    storage.mkdir()
    config, port, admin_port = write_cachesvc_config(workdir, name, storage, upstream, event_loop)
    child = spawn_cachesvc(workdir, name, config, source_root)
    service = Service(name, f"{LOOPBACK}:{port}", child)
    _ready(service, cachesvc_ready_url(admin_port))
    return service


def cachesvc_ready_url(admin_port: int) -> str:
    """cachesvc's readiness endpoint on its admin listener."""
    return f"http://{LOOPBACK}:{admin_port}/readyz"


def _ready(service: Service, url: str, ok_status: int = 200) -> None:
    try:
        service.child.wait_http(url, ok_status=ok_status)
    except BaseException:
        service.stop()
        raise
