"""containerd wiring: the hosts.toml files that send a node's pulls through cachesvc.

Rules for a node's hosts directory, whose files may not all be ours:

- A file cachesvc wrote starts with ``HEADER``; nothing else is ever removed or replaced.
- Before the first write over a file cachesvc did not write, it is copied once to
  ``hosts.toml.cachesvc-backup`` beside it. The new file is that original with cachesvc's
  ``[host]`` table inserted before its first ``[host]`` table (containerd tries hosts in
  file order, then ``server``), everything else kept verbatim; a later write merges from
  the backup again. An original that already lists this mirror is kept as it is, and one
  that is not valid TOML is kept untouched (a merge could not be checked): both logged.
- Every write is a temp file in the same directory, fsynced, then renamed over the target.
- ``uninstall_hosts_dir`` puts the backups back and removes the files with ``HEADER``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import tomllib
from dataclasses import dataclass
from pathlib import Path

from cachesvc.atomicfile import write_atomically
from cachesvc.config import Config

log = logging.getLogger("cachesvc.containerd")

HEADER = "# Written by cachesvc"
BACKUP_SUFFIX = ".cachesvc-backup"

# Where containerd's API lives for registries whose name is not their API host.
_SERVER = {"docker.io": "https://registry-1.docker.io"}


def hosts_toml(config: Config, registry: str, mirror_url: str) -> str:
    """The ``certs.d/<registry>/hosts.toml`` that tries cachesvc first, the registry last."""
    if config.registries[registry].under_policy:
        return _policy_hosts_toml(registry, mirror_url)
    endpoints = config.registries[registry].endpoints
    server = _SERVER.get(registry, endpoints[-1])
    return (
        f"{HEADER}: pulls of {registry} go through the node-local cache;\n"
        "# containerd falls back to the server below if cachesvc answers an error.\n"
        f'server = "{server}"\n'
        "\n"
        f'[host."{mirror_url}"]\n'
        '  capabilities = ["pull", "resolve"]\n'
    )


def _policy_hosts_toml(registry: str, mirror_url: str) -> str:
    """A registry under policy (``allow`` or ``verify``): cachesvc is the only host.

    containerd tries the next host after any 4xx and the ``server`` last, so a 403 from the
    policy would send the pull straight to the registry. With cachesvc as the server there
    is no path around the policy; the price is that a stopped cachesvc blocks these pulls.
    """
    return (
        f"{HEADER}: {registry} is under policy (allow/verify in cachesvc's\n"
        "# configuration), so cachesvc itself is the server: containerd moves on to the next\n"
        "# host after any 4xx, and a direct server would be a path around the policy.\n"
        "# While cachesvc is down, pulls of this registry fail (readiness gates the node).\n"
        f'server = "{mirror_url}"\n'
        "\n"
        f'[host."{mirror_url}"]\n'
        '  capabilities = ["pull", "resolve"]\n'
    )


@dataclass(frozen=True, slots=True)
class HostsFile:
    """What happened to one ``<registry>/hosts.toml``: ``written`` (ours, whole),
    ``merged`` (theirs plus our host), ``kept`` (theirs, untouched), ``removed`` or
    ``restored`` (uninstall); ``detail`` says why, for the log and the CLI."""

    path: Path
    action: str
    detail: str = ""


def write_hosts_dir(config: Config, directory: Path, mirror_url: str) -> list[HostsFile]:
    """Write one hosts.toml per configured registry under ``directory`` (rules above)."""
    done = []
    for registry in sorted(config.registries):
        target = directory / registry / "hosts.toml"
        target.parent.mkdir(parents=True, exist_ok=True)
        ours = hosts_toml(config, registry, mirror_url)
        result = _place(target, ours, mirror_url, whole=config.registries[registry].under_policy)
        log.info("%s %s%s", result.action, target, f" ({result.detail})" if result.detail else "")
        done.append(result)
    return done


def _place(target: Path, ours: str, mirror_url: str, *, whole: bool = False) -> HostsFile:
    """Write ``ours`` to ``target``, or merge it into the file that was there first.

    ``whole`` (a registry under policy): never merged, since the original's hosts and server
    would be a path around the policy; the original is still backed up for uninstall.
    """
    backup = target.with_name(target.name + BACKUP_SUFFIX)
    original = _original(target, backup)
    if original is None:
        _write_text(target, ours)
        return HostsFile(target, "written")
    if whole:
        if not backup.exists():
            _write_text(backup, original)
        _write_text(target, ours)
        return HostsFile(target, "written", f"under policy: replaced, original in {backup.name}")
    try:
        document = tomllib.loads(original)
    except tomllib.TOMLDecodeError as exc:
        return HostsFile(target, "kept", f"not valid TOML ({exc}); cachesvc left it alone")
    if mirror_url in (document.get("host") or {}):
        return HostsFile(target, "kept", f"it already lists {mirror_url}")
    if not backup.exists():
        _write_text(backup, original)
    _write_text(target, merged_hosts_toml(original, ours, backup.name))
    return HostsFile(target, "merged", f"the original is in {backup.name}")


def _original(target: Path, backup: Path) -> str | None:
    """The text of the file cachesvc did not write at ``target`` (None: there is none)."""
    if backup.exists():
        return backup.read_text(encoding="utf-8")
    if not target.exists():
        return None
    text = target.read_text(encoding="utf-8")
    return None if text.startswith(HEADER) else text


def merged_hosts_toml(original: str, ours: str, backup_name: str) -> str:
    """``original`` with the ``[host]`` table of ``ours`` inserted before its first one.

    Top-level keys (``server``, ``ca``, ...) stay top-level: they come before any table.
    """
    table = ours[ours.index("[host.") :]
    lines = original.splitlines(keepends=True)
    first = next((i for i, line in enumerate(lines) if line.lstrip().startswith("[host.")),
                 len(lines))  # fmt: skip
    head = "".join(lines[:first])
    if head and not head.endswith("\n"):
        head += "\n"
    return (
        f"{HEADER}, merged into the file that was here (kept in {backup_name}, put back\n"
        "# on uninstall): cachesvc's host first, then the hosts and server it had.\n"
        + head
        + ("\n" if head.strip() else "")
        + table
        + ("\n" + "".join(lines[first:]) if first < len(lines) else "")
    )


def uninstall_hosts_dir(directory: Path) -> list[HostsFile]:
    """Undo ``write_hosts_dir`` under ``directory``: restore backups, remove our files."""
    done = []
    for target in sorted(directory.glob("*/hosts.toml")):
        backup = target.with_name(target.name + BACKUP_SUFFIX)
        if not target.read_text(encoding="utf-8").startswith(HEADER):
            done.append(HostsFile(target, "kept", "not written by cachesvc"))
        elif backup.exists():
            os.replace(backup, target)
            done.append(HostsFile(target, "restored", f"from {backup.name}"))
        else:
            target.unlink()
            done.append(HostsFile(target, "removed"))
            _remove_if_empty(target.parent)
    for backup in sorted(directory.glob(f"*/hosts.toml{BACKUP_SUFFIX}")):
        target = backup.with_name("hosts.toml")
        if not target.exists():  # the original was deleted after our write: put it back
            os.replace(backup, target)
            done.append(HostsFile(target, "restored", f"from {backup.name}"))
    for result in done:
        log.info("%s %s%s", result.action, result.path,
                 f" ({result.detail})" if result.detail else "")  # fmt: skip
    return done


def _remove_if_empty(directory: Path) -> None:
    with contextlib.suppress(OSError):  # not empty: other files of the operator's live there
        directory.rmdir()


def _write_text(target: Path, text: str) -> None:
    """``text`` at ``target`` or nothing (``cachesvc.atomicfile``), readable by containerd."""
    write_atomically(target, text.encode(), mode=0o644)
