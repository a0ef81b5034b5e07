"""Is containerd on this node wired to this daemon? Checked from the files, not assumed.

Two questions, answered from the node's files (mounted under ``host_root``):

1. Which hosts directory does containerd read? ``cachesvc.ops.wiring`` answers from
   ``config.toml`` and the files its ``imports`` name (read here, under ``host_root``).
2. Does every configured registry have a ``<dir>/<registry>/hosts.toml`` whose ``[host]``
   tables include this daemon's mirror listener, with the ``pull`` capability?

The init container asks (1) before writing; the daemon asks both every
``containerd.interval`` (``WiringMonitor``) and reports the answer in ``/readyz`` and
``cachesvc_containerd_wired``. What this cannot see: whether containerd was restarted
after ``config_path`` was set (it reads config.toml only at start-up).
"""

from __future__ import annotations

import asyncio
import contextlib
import glob
import ipaddress
import logging
import os
import tomllib
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlsplit

from cachesvc.background import cancel_and_wait
from cachesvc.config import ContainerdCheck, ListenAddress
from cachesvc.metrics import Metrics
from cachesvc.ops.wiring import Wiring, WiringError, effective_hosts_dir, with_config_path

log = logging.getLogger("cachesvc.containerd")

__all__ = [
    "WiringMonitor",
    "WiringReport",
    "find_hosts_dir",
    "hosts_problems",
    "inspect",
    "write_config_path",
]


def on_host(host_root: Path, node_path: str) -> Path:
    """``node_path`` (absolute, on the node) as this process sees it under ``host_root``."""
    return host_root / PurePosixPath(node_path).relative_to("/")


def _read(path: Path, what: str) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except OSError as exc:
        raise WiringError(f"cannot read {what} at {path}: {exc.strerror or exc} (is it "
                          "mounted?)") from None  # fmt: skip


def _imports(text: str, config_toml: Path, host_root: Path) -> list[str]:
    """The texts of the files ``imports`` names, in order (globs expanded, sorted).

    An absolute name is a node path (read under ``host_root``); a relative one is relative
    to config.toml's directory, as containerd resolves it.
    """
    try:
        names = tomllib.loads(text).get("imports") or []
    except tomllib.TOMLDecodeError:
        return []  # effective_hosts_dir reports the syntax error
    texts = []
    for name in [str(n) for n in names] if isinstance(names, list) else []:
        local = on_host(host_root, name) if name.startswith("/") else config_toml.parent / name
        matches = sorted(glob.glob(str(local)))
        if not matches and not glob.has_magic(str(local)):
            raise WiringError(f"{config_toml} imports {name}, which is not readable at "
                              f"{local}: mount it (read-only) too")  # fmt: skip
        texts += [_read(Path(m), f"the import {name}") for m in matches]
    return texts


def find_hosts_dir(
    config_toml: Path, host_root: Path, version: tuple[int, int] | None
) -> tuple[Wiring, Path]:
    """The hosts directory containerd reads, and where it is under ``host_root``.

    Refused (``WiringError``) when it is not a directory there, or escapes ``host_root``
    (``..`` or a symlink): writing or checking anywhere else would be checking nothing.
    """
    text = _read(config_toml, "containerd's config.toml")
    wiring = effective_hosts_dir(text, containerd_version=version, where=str(config_toml),
                                 imports=_imports(text, config_toml, host_root))  # fmt: skip
    local = on_host(host_root, wiring.hosts_dir)
    resolved, root = local.resolve(), host_root.resolve()
    if resolved != root and root not in resolved.parents:
        raise WiringError(f"the hosts directory {wiring.hosts_dir} ({wiring.source}) is not "
                          f"under {host_root} here ({resolved}): refusing to use it")  # fmt: skip
    if not local.is_dir():
        raise WiringError(
            f"the hosts directory {wiring.hosts_dir} ({wiring.source}) is not mounted at "
            f"{local}: mount the node's {wiring.hosts_dir} there (the DaemonSet's certs-d volume)"
        )
    return wiring, local


def write_config_path(config_toml: Path) -> str:
    """Set ``config_path`` (the default hosts directory) in ``config_toml``; its value.

    Only when the file sets none (an explicit one, even unmounted, is the operator's:
    ``WiringError``). The DaemonSet mounts config.toml as a single file, where a rename
    over it fails (EBUSY), so it is rewritten in place, after the edit was verified.
    """
    text = _read(config_toml, "containerd's config.toml")
    try:
        named: str | None = effective_hosts_dir(text, where=str(config_toml)).hosts_dir
    except WiringError:
        named = None  # no config_path (or one this edit refuses below)
    if named is not None:
        raise WiringError(f"{config_toml} already sets config_path ({named}): not changing it")
    edited = with_config_path(text)  # refuses legacy mirrors and layouts it cannot edit
    try:
        with config_toml.open("r+", encoding="utf-8") as f:
            f.write(edited)
            f.truncate()
            f.flush()
            os.fsync(f.fileno())
    except OSError as exc:
        raise WiringError(f"cannot write {config_toml}: {exc.strerror or exc} (mount it "
                          "read-write for --write-config-path)") from None  # fmt: skip
    return effective_hosts_dir(edited).hosts_dir


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    with contextlib.suppress(ValueError):
        return ipaddress.ip_address(host).is_loopback
    return False


def points_here(url: str, listen: ListenAddress) -> bool:
    """Whether a ``[host."<url>"]`` of hosts.toml reaches the listener bound at ``listen``."""
    try:
        parts = urlsplit(url if "://" in url else f"https://{url}")
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        return False
    host = parts.hostname or ""
    if port != listen.port:
        return False
    if listen.host in ("0.0.0.0", "::"):
        return True  # a wildcard bind answers on every address of the node
    return host == listen.host or (_loopback(host) and _loopback(listen.host))


def hosts_problems(directory: Path, registries: Iterable[str], listen: ListenAddress) -> list[str]:
    """What keeps containerd from sending each registry's pulls to ``listen`` (empty: none)."""
    problems = []
    for registry in sorted(registries):
        path = directory / registry / "hosts.toml"
        try:
            document: dict[str, Any] = tomllib.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            problems.append(f"{registry}: no {path}")
            continue
        except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
            problems.append(f"{registry}: {path} is unusable ({exc})")
            continue
        raw = document.get("host")
        hosts: dict[str, Any] = raw if isinstance(raw, dict) else {}
        ours = [entry for url, entry in hosts.items() if points_here(url, listen)]
        if not ours:
            problems.append(f"{registry}: {path} has no [host] for this mirror ({listen})")
        elif not any(_pulls(entry) for entry in ours):
            problems.append(f"{registry}: {path} lists this mirror without the pull capability")
    return problems


def _pulls(entry: object) -> bool:
    """containerd's default capabilities (none listed) include pull."""
    if not isinstance(entry, dict):
        return False
    return "pull" in (entry.get("capabilities") or ["pull"])


@dataclass(frozen=True, slots=True)
class WiringReport:
    """One check's answer; ``checked`` False when ``containerd.config`` is unset."""

    checked: bool
    wired: bool
    hosts_dir: str | None = None
    problems: tuple[str, ...] = ()

    def detail(self) -> dict[str, object]:
        """The ``containerd`` object of ``/readyz``."""
        if not self.checked:
            return {"checked": False, "wired": None,
                    "problems": ["not checked: containerd.config is unset"]}  # fmt: skip
        return {"checked": True, "wired": self.wired, "hosts_dir": self.hosts_dir,
                "problems": list(self.problems)}  # fmt: skip


def inspect(
    check: ContainerdCheck, registries: Iterable[str], listen: ListenAddress
) -> WiringReport:
    """Both questions of the module docstring, for the daemon (blocking file reads)."""
    if check.config is None:
        return WiringReport(checked=False, wired=False)
    try:
        wiring, local = find_hosts_dir(check.config, check.host_root, check.version)
    except WiringError as exc:
        return WiringReport(checked=True, wired=False, problems=(str(exc),))
    problems = tuple(hosts_problems(local, registries, listen))
    return WiringReport(True, not problems, wiring.hosts_dir, problems)


class WiringMonitor:
    """Runs ``inspect`` every ``containerd.interval`` in a thread; keeps the last report.

    A change is logged once (a warning when wiring is lost), not at every check.
    """

    def __init__(self, check: ContainerdCheck, registries: Iterable[str], metrics: Metrics) -> None:
        self._check = check
        self._registries = tuple(registries)
        self._metrics = metrics
        self.report = WiringReport(checked=False, wired=False)
        self._task: asyncio.Task[None] | None = None

    async def start(self, listen: ListenAddress) -> None:
        """First check now (so /readyz is right from the start), then in the background."""
        await self.refresh(listen)
        if self._check.config is not None:
            loop = asyncio.get_running_loop()
            self._task = loop.create_task(self._watch(listen), name="containerd-wiring")

    async def refresh(self, listen: ListenAddress) -> WiringReport:
        """Check now; update the report, the gauge and the log."""
        report = await asyncio.to_thread(inspect, self._check, self._registries, listen)
        if report != self.report and report.checked:
            if report.wired:
                log.info("containerd on this node is wired to cachesvc (%s)", report.hosts_dir)
            else:
                log.warning("containerd on this node is not wired to cachesvc: pulls bypass "
                            "the cache: %s", "; ".join(report.problems))  # fmt: skip
        self.report = report
        self._metrics.containerd_wired.set(1 if report.wired else 0)
        return report

    async def _watch(self, listen: ListenAddress) -> None:
        while True:
            await asyncio.sleep(self._check.interval)
            try:
                await self.refresh(listen)
            except Exception:  # a failed check must not end checking for good
                log.exception("containerd wiring check failed")

    async def stop(self) -> None:
        """Stop the background checks."""
        await cancel_and_wait(self._task)
        self._task = None
