"""The command line; the only place that reads argv and the environment.

cachesvc serve [--config FILE]             run the daemon (CACHESVC_CONFIG works too)
cachesvc check-config [--config FILE]      validate a configuration and print it
cachesvc containerd-config [--write DIR]   print or write hosts.toml for every registry
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

from cachesvc import __version__, logs
from cachesvc.config import Config, default_config, load_config
from cachesvc.containerd import hosts_toml, write_hosts_dir
from cachesvc.errors import CachesvcError, ConfigError, StoreError

EXIT_USAGE = 2


def _load(args: argparse.Namespace) -> Config:
    path = args.config or os.environ.get("CACHESVC_CONFIG")
    if path:
        return load_config(Path(path))
    config = default_config()
    root = config.storage.root
    if not _writable(root):
        # The embedded default on a workstation: keep data beside the working directory.
        fallback = Path.cwd() / "data"
        config = replace(config, storage=replace(config.storage, root=fallback))
    return config


def _writable(path: Path) -> bool:
    probe = path
    while not probe.exists():
        if probe.parent == probe:
            return False
        probe = probe.parent
    return os.access(probe, os.W_OK)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cachesvc", description="Node-local pull-through cache for container images."
    )
    parser.add_argument("--version", action="version", version=f"cachesvc {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, text in (
        ("serve", "run the mirror daemon"),
        ("check-config", "validate a configuration file and print the result"),
        ("containerd-config", "print (or --write) containerd hosts.toml files for cachesvc"),
    ):
        cmd = sub.add_parser(name, help=text, description=text)
        cmd.add_argument(
            "--config",
            metavar="FILE",
            help="configuration file (default: $CACHESVC_CONFIG, else the embedded default)",
        )
    sub.choices["containerd-config"].add_argument(
        "--write",
        metavar="DIR",
        help="write DIR/<registry>/hosts.toml (e.g. /etc/containerd/certs.d)",
    )
    sub.choices["containerd-config"].add_argument(
        "--mirror-url", metavar="URL", help="URL containerd should use (default: from listen)"
    )
    return parser


def _mirror_url(config: Config, override: str | None) -> str:
    if override:
        return override.rstrip("/")
    host = config.listen.host
    if host in ("0.0.0.0", "::"):
        host = "127.0.0.1"
    return (
        f"http://[{host}]:{config.listen.port}"
        if ":" in host
        else f"http://{host}:{config.listen.port}"
    )


def _serve(config: Config) -> int:
    logs.configure(config.log)
    from cachesvc.app import serve

    hosts = _mirror_url(config, None)
    print(
        f"cachesvc {__version__}: mirror API on http://{config.listen}, admin on "
        f"http://{config.admin.listen}, storage in {config.storage.root}",
        file=sys.stderr,
    )
    print(
        "Point containerd at it with /etc/containerd/certs.d/<registry>/hosts.toml "
        "(cachesvc containerd-config --write /etc/containerd/certs.d), e.g.:\n",
        file=sys.stderr,
    )
    first = sorted(config.registries)[0]
    print(f"# /etc/containerd/certs.d/{first}/hosts.toml\n{hosts_toml(config, first, hosts)}",
          file=sys.stderr)  # fmt: skip
    if config.event_loop == "uvloop":
        import uvloop

        uvloop.run(serve(config))
    else:
        asyncio.run(serve(config))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``cachesvc`` command; returns the exit status."""
    args = _parser().parse_args(argv)
    try:
        config = _load(args)
        if args.command == "serve":
            return _serve(config)
        if args.command == "check-config":
            print(f"configuration OK: {len(config.registries)} registries "
                  f"({', '.join(sorted(config.registries))}), mirror on {config.listen}, "
                  f"admin on {config.admin.listen}, storage in {config.storage.root}")  # fmt: skip
            return 0
        mirror_url = _mirror_url(config, args.mirror_url)
        if args.write:
            for path in write_hosts_dir(config, Path(args.write), mirror_url):
                print(f"wrote {path}")
        else:
            for registry in sorted(config.registries):
                print(f"# {registry}/hosts.toml\n{hosts_toml(config, registry, mirror_url)}")
        return 0
    except ConfigError as exc:
        print(f"cachesvc: invalid configuration: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except StoreError as exc:
        print(f"cachesvc: storage: {exc}", file=sys.stderr)
        return 1
    except CachesvcError as exc:
        print(f"cachesvc: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
