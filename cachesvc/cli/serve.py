"""``cachesvc serve`` and ``check-config``: run the daemon, or check what it would run."""

from __future__ import annotations

import asyncio
import os
import shlex
import shutil
import sys
from pathlib import Path

from cachesvc import __version__, logs
from cachesvc.cli.containerd import mirror_url_for
from cachesvc.config import Config
from cachesvc.errors import ConfigError
from cachesvc.ops.containerd import hosts_toml
from cachesvc.upstream.tls import tls_context


def _executable() -> str:
    """How to run this very cachesvc again: the script's path, or ``python -m cachesvc``."""
    argv0 = sys.argv[0] if sys.argv else ""
    if not argv0 or Path(argv0).name == "__main__.py":
        return f"{shlex.quote(sys.executable)} -m cachesvc"
    found = argv0 if os.sep in argv0 else shutil.which(argv0)
    return shlex.quote(os.path.abspath(found)) if found else "cachesvc"


def refuse_port_zero(config: Config) -> None:
    """Port 0 binds a random port each start: containerd's hosts.toml could never name it."""
    for key, address in (("listen", config.listen), ("admin.listen", config.admin.listen)):
        if address.port == 0:
            raise ConfigError(
                key,
                f"port 0 ({address}) would pick a random port at every start, which "
                "containerd (and the CLI) cannot be pointed at: give a fixed port such as "
                f"{'127.0.0.1:5000' if key == 'listen' else '127.0.0.1:5050'}",
            )


def _banner(config: Config, config_path: str | None, mirror: str, admin: str) -> str:
    """What to do next, printed once both listeners are bound."""
    hosts = mirror_url_for(config, None)
    flag = f" --config {shlex.quote(config_path)}" if config_path else ""
    first = sorted(config.registries)[0]
    return (
        f"cachesvc {__version__}: mirror API on {mirror}, admin on {admin}, storage in "
        f"{config.storage.root}\n"
        "Point containerd at it (one hosts.toml per configured registry):\n\n"
        f"  {_executable()} containerd-config{flag} --write /etc/containerd/certs.d\n\n"
        f"which writes, e.g.:\n# /etc/containerd/certs.d/{first}/hosts.toml\n"
        f"{hosts_toml(config, first, hosts)}"
    )


def run_serve(config: Config, config_path: str | None) -> int:
    """Run the daemon until SIGTERM or SIGINT; print the banner once it listens."""
    logs.configure(config.log)
    from cachesvc.app import Daemon, serve

    def ready(daemon: Daemon) -> None:
        print(_banner(config, config_path, daemon.mirror_url, daemon.admin_url),
              file=sys.stderr, flush=True)  # fmt: skip

    if config.event_loop == "uvloop":
        import uvloop

        uvloop.run(serve(config, on_ready=ready))
    else:
        asyncio.run(serve(config, on_ready=ready))
    return 0


def run_check_config(config: Config) -> int:
    """Load what ``serve`` would (TLS files included) and say what it found."""
    for settings in config.registries.values():
        tls_context(settings)  # load ca_file and client certificates as serve would
    count = len(config.registries)
    print(f"configuration OK: {count} registr{'y' if count == 1 else 'ies'} "
          f"({', '.join(sorted(config.registries))}), mirror on {config.listen}, "
          f"admin on {config.admin.listen}, storage in {config.storage.root}")  # fmt: skip
    return 0
