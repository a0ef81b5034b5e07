"""The command line; the only place that reads argv and the environment.

cachesvc serve [--config FILE]             run the daemon (CACHESVC_CONFIG works too)
cachesvc check-config [--config FILE]      validate a configuration and print it
cachesvc containerd-config [--write [DIR]] [--containerd-config F --host-root R]
                  [--containerd-version X.Y] [--write-config-path] [--uninstall]
                                           print or write hosts.toml for every registry,
                                           into the directory containerd is found to read
cachesvc prewarm REF... [--file F] [--platform P ...] [--pin] [--admin URL] [--token-file F]
                                           prewarm images with progress; exit 0 only if all did
                 [--cluster]               on every cluster member (one job, a bar per member)
cachesvc status [--admin URL]              health summary from /metrics and /readyz
cachesvc images [--registry R] [--repository R] [--pinned] [--json]
                                           the inventory as a table
cachesvc purge REF...                      remove images and the blobs only they use
cachesvc pins / unpin REF...               the pin list; unpin images
cachesvc jobs [ID] / cancel ID             prewarm jobs; cancel one
cachesvc verify [--config FILE] [--remove] [--rate SIZE]
                                           hash every stored file; exit 1 on damage

The admin URL defaults to ``admin.listen`` of the configuration and the token to the
content of ``admin.token_file`` (``--token-file`` or ``$CACHESVC_ADMIN_TOKEN_FILE``
override it). Exit statuses of the admin commands are documented in adminclient.py.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shlex
import shutil
import sys
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Protocol
from urllib.parse import urlsplit

from cachesvc import __version__, logs
from cachesvc.config import Config, ListenAddress, default_config, load_config, proxy_environment
from cachesvc.config.values import parse_version
from cachesvc.errors import (
    AdminUnavailable,
    CachesvcError,
    ConfigError,
    StoreError,
    UsageError,
)
from cachesvc.ops.adminclient import (
    AdminClient,
    run_cancel,
    run_images,
    run_jobs,
    run_pins,
    run_prewarm,
    run_purge,
    run_status,
    run_unpin,
)
from cachesvc.ops.containerd import HostsFile, hosts_toml, uninstall_hosts_dir, write_hosts_dir
from cachesvc.ops.nodewiring import find_hosts_dir, write_config_path
from cachesvc.ops.wiring import WiringError
from cachesvc.upstream.tls import tls_context

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


class Subcommands(Protocol):
    """What ``add_subparsers`` returns, as far as this module uses it (argparse documents
    the object's ``add_parser`` method but not its class, which is private)."""

    def add_parser(
        self, name: str, *, help: str | None = ..., description: str | None = ...
    ) -> argparse.ArgumentParser:
        """A parser for subcommand ``name``."""
        ...


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
    _containerd_flags(sub.choices["containerd-config"])
    _admin_commands(sub)
    _verify_command(sub)
    return parser


def _verify_command(sub: Subcommands) -> None:
    verify = sub.add_parser(
        "verify",
        help="check every stored file against its digest",
        description="Hash every file under storage.root/blobs against its name, without "
        "the daemon (safe while it runs). Prints each damaged file; exit 1 if any.",
    )
    verify.add_argument("--config", metavar="FILE", help="configuration file (storage.root)")
    verify.add_argument(
        "--remove", action="store_true", help="delete damaged files (fetched again when asked)"
    )
    verify.add_argument("--rate", metavar="SIZE", help="read at most SIZE per second (e.g. 50MiB)")


def _verify(args: argparse.Namespace, config: Config) -> int:
    from cachesvc.config.values import parse_size
    from cachesvc.ops.storecheck import run_verify

    rate = parse_size(args.rate, "--rate") if args.rate else None
    return run_verify(config.storage.root, sys.stdout, sys.stderr, remove=args.remove, rate=rate)


def _admin_commands(sub: Subcommands) -> None:
    prewarm = sub.add_parser(
        "prewarm",
        help="fetch images into the cache before a rollout",
        description="Submit a prewarm job and follow it: a progress bar per image on a "
        "terminal, plain lines otherwise. Exit 0 only if every image succeeded.",
    )
    prewarm.add_argument("refs", nargs="*", metavar="REF", help="image references")
    prewarm.add_argument("--file", metavar="F", help="read references from F, one per line")
    prewarm.add_argument("--platform", action="append", default=[], metavar="OS/ARCH",
                         help="platform to fetch from an index (repeatable; default: the "
                         "node's own)")  # fmt: skip
    prewarm.add_argument("--pin", action="store_true", help="pin the images (no eviction)")
    prewarm.add_argument("--cluster", action="store_true",
                         help="prewarm on every cluster member (cluster mode; one upstream "
                         "fetch per blob for the whole cluster)")  # fmt: skip
    status = sub.add_parser("status", help="health summary: hit ratio, cache fill, upstreams")
    images = sub.add_parser("images", help="list cached images")
    images.add_argument("--registry", help="only this registry")
    images.add_argument("--repository", help="only this repository")
    images.add_argument("--pinned", action="store_true", help="only pinned images")
    images.add_argument("--json", action="store_true", help="print JSON instead of a table")
    purge = sub.add_parser("purge", help="remove cached images and the blobs only they use")
    purge.add_argument("refs", nargs="+", metavar="REF", help="image references")
    pins = sub.add_parser("pins", help="list pinned images")
    unpin = sub.add_parser("unpin", help="unpin images (a tag: every digest pinned under it)")
    unpin.add_argument("refs", nargs="+", metavar="REF", help="image references")
    jobs = sub.add_parser("jobs", help="list prewarm jobs, or show one")
    jobs.add_argument("job", nargs="?", metavar="ID", help="a job id")
    cancel = sub.add_parser("cancel", help="cancel a prewarm job")
    cancel.add_argument("job", metavar="ID", help="the job id")
    for cmd in (prewarm, status, images, purge, pins, unpin, jobs, cancel):
        cmd.add_argument("--config", metavar="FILE",
                         help="configuration file for the defaults below")  # fmt: skip
        cmd.add_argument("--admin", metavar="URL",
                         help="admin listener URL (default: from admin.listen)")  # fmt: skip
        cmd.add_argument("--token-file", metavar="F",
                         help="admin token file (default: admin.token_file)")  # fmt: skip


def _admin_client(args: argparse.Namespace, config: Config, *, token: bool) -> AdminClient:
    """The admin URL and token; ``token=False``: use the token only if one is configured."""
    address = config.admin.listen
    host = "127.0.0.1" if address.host in ("0.0.0.0", "::") else address.host
    url = args.admin or (
        f"http://[{host}]:{address.port}" if ":" in host else f"http://{host}:{address.port}"
    )
    path = args.token_file or os.environ.get("CACHESVC_ADMIN_TOKEN_FILE") or config.admin.token_file
    secret = None
    if path:
        try:
            # The first token: the file may hold several during a rotation (any is accepted).
            secret = next(iter(Path(path).read_text(encoding="utf-8").split()), None)
        except OSError as exc:
            if token:
                raise AdminUnavailable(f"cannot read the admin token file {path}: {exc}") from None
    return AdminClient(url.rstrip("/"), secret, str(path) if path else None)


def _references(args: argparse.Namespace) -> list[str]:
    refs = list(args.refs)
    if args.file:
        try:
            text = Path(args.file).read_text(encoding="utf-8")
        except OSError as exc:
            raise AdminUnavailable(f"cannot read {args.file}: {exc}", EXIT_USAGE) from None
        for line in text.splitlines():
            line = line.split("#", 1)[0].strip()
            if line:
                refs.append(line)
    if not refs:
        raise AdminUnavailable("give at least one image reference (or --file)", EXIT_USAGE)
    return refs


ADMIN_COMMANDS = ("prewarm", "status", "images", "purge", "pins", "unpin", "jobs", "cancel")


def _admin(args: argparse.Namespace, config: Config) -> int:
    try:
        client = _admin_client(args, config, token=args.command != "status")
        return asyncio.run(_admin_command(args, client))
    except AdminUnavailable as exc:
        print(f"cachesvc {args.command}: {exc}", file=sys.stderr)
        return exc.status


async def _admin_command(args: argparse.Namespace, client: AdminClient) -> int:
    out = sys.stdout
    match args.command:
        case "status":
            return await run_status(client, out)
        case "images":
            wanted = (
                ("registry", args.registry),
                ("repository", args.repository),
                ("pinned", "true" if args.pinned else None),
            )
            filters = {k: v for k, v in wanted if v}
            return await run_images(client, filters, out, as_json=args.json)
        case "purge":
            return await run_purge(client, args.refs, out)
        case "pins":
            return await run_pins(client, out)
        case "unpin":
            return await run_unpin(client, args.refs, out)
        case "jobs":
            return await run_jobs(client, args.job, out)
        case "cancel":
            return await run_cancel(client, args.job, out)
    refs = _references(args)
    return await run_prewarm(
        client, refs, args.platform, args.pin, out, tty=out.isatty(),
        scope="cluster" if args.cluster else "node",
    )  # fmt: skip


def _mirror_url(config: Config, override: str | None) -> str:
    if override:
        url = override.rstrip("/")
        parts = urlsplit(url)
        if (
            parts.scheme not in ("http", "https")
            or not parts.hostname
            or parts.query
            or parts.fragment
            or any(c in url for c in " \"\\'\n\t<>")
        ):
            raise UsageError(
                f"--mirror-url {override!r}: expected a plain http:// or https:// URL, "
                "e.g. http://127.0.0.1:5000"
            )
        return url
    host = config.listen.host
    if host in ("0.0.0.0", "::"):
        host = "127.0.0.1"  # a wildcard bind is reached on loopback
    return f"http://{ListenAddress(host, config.listen.port)}"  # brackets IPv6 hosts


def _executable() -> str:
    """How to run this very cachesvc again: the script's path, or ``python -m cachesvc``."""
    argv0 = sys.argv[0] if sys.argv else ""
    if not argv0 or Path(argv0).name == "__main__.py":
        return f"{shlex.quote(sys.executable)} -m cachesvc"
    found = argv0 if os.sep in argv0 else shutil.which(argv0)
    return shlex.quote(os.path.abspath(found)) if found else "cachesvc"


def _refuse_port_zero(config: Config) -> None:
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
    hosts = _mirror_url(config, None)
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


def _serve(config: Config, config_path: str | None) -> int:
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


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``cachesvc`` command; returns the exit status."""
    args = _parser().parse_args(argv)
    try:
        config = _load(args)
        if args.command in ADMIN_COMMANDS:
            return _admin(args, config)
        if args.command == "verify":
            return _verify(args, config)
        if args.command in ("serve", "check-config"):
            # The daemon's egress proxies; an unusable $HTTPS_PROXY is refused like a bad key.
            config = replace(config, proxy_environment=proxy_environment(os.environ))
        if args.command in ("serve", "check-config"):
            _refuse_port_zero(config)
        if args.command == "serve":
            return _serve(config, args.config or os.environ.get("CACHESVC_CONFIG"))
        if args.command == "check-config":
            for settings in config.registries.values():
                tls_context(settings)  # load ca_file and client certificates as serve would
            count = len(config.registries)
            print(f"configuration OK: {count} registr{'y' if count == 1 else 'ies'} "
                  f"({', '.join(sorted(config.registries))}), mirror on {config.listen}, "
                  f"admin on {config.admin.listen}, storage in {config.storage.root}")  # fmt: skip
            return 0
        return _containerd_config(args, config)
    except ConfigError as exc:
        print(f"cachesvc: invalid configuration: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except UsageError as exc:
        print(f"cachesvc: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except StoreError as exc:
        print(f"cachesvc: storage: {exc}", file=sys.stderr)
        return 1
    except CachesvcError as exc:
        print(f"cachesvc: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


# -- containerd-config: the flags the DaemonSet's init container and cleanup use ----------

_FOUND = "<found>"  # --write without DIR: the directory the wiring check found


def _containerd_flags(cmd: argparse.ArgumentParser) -> None:
    cmd.add_argument("--write", metavar="DIR", nargs="?", const=_FOUND,
                     help="write DIR/<registry>/hosts.toml; without DIR, into the hosts "
                     "directory --containerd-config says containerd reads")  # fmt: skip
    cmd.add_argument("--mirror-url", metavar="URL",
                     help="URL containerd should use (default: from listen)")  # fmt: skip
    cmd.add_argument("--containerd-config", metavar="F",
                     help="containerd's config.toml: refuse unless containerd reads hosts "
                     "files (config_path, or the 2.2 default) and find where")  # fmt: skip
    cmd.add_argument("--host-root", metavar="DIR", default="/",
                     help="where the node's filesystem is mounted; node paths in config.toml "
                     "are read under it; the hosts directory must be inside it")  # fmt: skip
    cmd.add_argument("--containerd-version", metavar="X.Y",
                     help="the node's containerd release (default: containerd.version); 2.2 "
                     "and later read /etc/containerd/certs.d without config_path")  # fmt: skip
    cmd.add_argument("--write-config-path", action="store_true",
                     help="opt-in: when config.toml has no config_path, set it (the file must be "
                     "writable), then exit 1: containerd must be restarted to read it")  # fmt: skip
    cmd.add_argument("--uninstall", action="store_true",
                     help="restore the hosts.toml backups and remove the files cachesvc wrote "
                     "(needs no --config)")  # fmt: skip


def _containerd_config(args: argparse.Namespace, config: Config) -> int:
    """``cachesvc containerd-config``: check, then print, write or uninstall."""
    found: Path | None = None
    if args.containerd_config:
        version = (parse_version(args.containerd_version, "--containerd-version")
                   if args.containerd_version else config.containerd.version)  # fmt: skip
        found = _found_hosts_dir(args, Path(args.containerd_config), version)
        if found is None:
            return 1
    elif args.write == _FOUND or (args.uninstall and not args.write):
        raise UsageError("--write without DIR and --uninstall need --containerd-config F "
                         "(or give the directory: --write DIR)")  # fmt: skip
    directory = found if args.write in (_FOUND, None) else Path(args.write)
    if args.uninstall:
        assert directory is not None
        _say(uninstall_hosts_dir(directory))
        return 0
    mirror_url = _mirror_url(config, args.mirror_url)
    if args.write is None:
        for registry in sorted(config.registries):
            print(f"# {registry}/hosts.toml\n{hosts_toml(config, registry, mirror_url)}")
        return 0
    assert directory is not None
    try:
        written = write_hosts_dir(config, directory, mirror_url)
    except OSError as exc:
        print(f"cachesvc: cannot write hosts.toml files under {directory}: "
              f"{exc.strerror or exc} (run as root, or pick a writable --write DIR)",
              file=sys.stderr)  # fmt: skip
        return 1
    _say(written)
    return 0


def _say(results: list[HostsFile]) -> None:
    """One line per hosts file: written, merged, kept, removed or restored, and why."""
    for result in results:
        action = "wrote" if result.action == "written" else result.action
        print(f"{action} {result.path}" + (f" ({result.detail})" if result.detail else ""))


def _found_hosts_dir(
    args: argparse.Namespace, config_toml: Path, version: tuple[int, int] | None
) -> Path | None:
    """The hosts directory under --host-root, or None after saying why (and, with
    --write-config-path, after setting config_path)."""
    try:
        wiring, local = find_hosts_dir(config_toml, Path(args.host_root), version)
    except WiringError as exc:
        if not args.write_config_path:
            print(f"cachesvc: containerd would ignore cachesvc's hosts files: {exc}",
                  file=sys.stderr)  # fmt: skip
            return None
        hosts_dir = write_config_path(config_toml)
        print(f"cachesvc: set config_path = \"{hosts_dir}\" in {config_toml}; containerd reads "
              "it only at start-up: restart containerd on this node (systemctl restart "
              "containerd), then this pod", file=sys.stderr)  # fmt: skip
        return None
    for note in wiring.notes:
        print(f"cachesvc: note: {note}", file=sys.stderr)
    print(f"containerd reads hosts files from {wiring.hosts_dir} ({wiring.source}), here {local}")
    return local
