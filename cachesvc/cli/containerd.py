"""``cachesvc containerd-config``: check containerd's wiring, then print, write or
uninstall a hosts.toml per configured registry."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from urllib.parse import urlsplit

from cachesvc.config import Config, ListenAddress
from cachesvc.config.values import parse_version
from cachesvc.errors import UsageError
from cachesvc.ops.containerd import HostsFile, hosts_toml, uninstall_hosts_dir, write_hosts_dir
from cachesvc.ops.nodewiring import find_hosts_dir, write_config_path
from cachesvc.ops.wiring import WiringError

_FOUND = "<found>"  # --write without DIR: the directory the wiring check found


def mirror_url_for(config: Config, override: str | None) -> str:
    """The URL containerd should use: ``--mirror-url`` checked, else from ``listen``."""
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


def add_containerd_flags(cmd: argparse.ArgumentParser) -> None:
    """``containerd-config``'s flags: those the DaemonSet's init container and cleanup use."""
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


def run_containerd_config(args: argparse.Namespace, config: Config) -> int:
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
    mirror_url = mirror_url_for(config, args.mirror_url)
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
