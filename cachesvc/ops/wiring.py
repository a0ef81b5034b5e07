"""Which hosts directory containerd really reads, found in its ``config.toml``.

Writing ``hosts.toml`` files is useless unless containerd's CRI plugin reads the directory
they are in: without ``config_path`` (containerd 1.x, and 2.0/2.1 whose default arrives only
in 2.2) the files are ignored, pods go Ready and every pull silently bypasses the cache.
The init container therefore checks the node's ``config.toml`` first and refuses to start,
with one line saying what to add where, unless the wiring will work.

Where ``config_path`` lives, by config layout (``version`` at the top of the file)::

    version 3 (containerd 2.x)   [plugins."io.containerd.cri.v1.images".registry]
    version 2 (1.x; 2.x migrates) [plugins."io.containerd.grpc.v1.cri".registry]
    version 1 (1.x, old)          [plugins.cri.registry]

What containerd refuses or ignores next to ``config_path`` (its CRI config validation):
non-empty ``registry.mirrors`` (the plugin fails to load and the node goes NotReady) and
``registry.configs.<host>.tls`` (refused as well). ``configs.<host>.auth`` still works with
``config_path`` (deprecated): it is kept and reported as a note, not refused.

``config_path`` may list several directories (``:``-separated, tried in order for each
registry); cachesvc writes into the first, which containerd consults first.

Everything here is pure (text in, answer out) so it is tested on real ``config.toml``
samples; reading the file, ``imports`` and writing belong to the caller.
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from cachesvc.errors import CachesvcError

__all__ = [
    "DEFAULT_HOSTS_DIR",
    "Wiring",
    "WiringError",
    "config_path_lines",
    "effective_hosts_dir",
    "registry_table",
    "with_config_path",
]

DEFAULT_HOSTS_DIR = "/etc/containerd/certs.d"
# The first containerd release whose CRI plugin reads DEFAULT_HOSTS_DIR without config_path.
DEFAULT_SINCE = (2, 2)

_TABLES = {
    3: ("plugins", "io.containerd.cri.v1.images", "registry"),
    2: ("plugins", "io.containerd.grpc.v1.cri", "registry"),
    1: ("plugins", "cri", "registry"),
}


class WiringError(CachesvcError):
    """containerd on this node would not read the hosts files cachesvc writes."""


@dataclass(frozen=True, slots=True)
class Wiring:
    """The answer: where to write hosts files, and why that is the right place.

    ``hosts_dir`` is a path on the node (the caller maps it into its own mounts);
    ``source`` is ``"config_path"`` when the file sets it, ``"default"`` for the 2.2
    default; ``notes`` are harmless findings worth a log line.
    """

    hosts_dir: str
    table: str
    source: str
    notes: tuple[str, ...] = ()


def registry_table(version: int) -> str:
    """The TOML header of the CRI registry table for a config ``version``."""
    plugins, plugin, registry = _TABLES[version]
    return f'[{plugins}."{plugin}".{registry}]'


def _parse(text: str, where: str) -> dict[str, Any]:
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise WiringError(f"{where} is not valid TOML ({exc}): cannot tell where containerd "
                          "reads hosts files") from None  # fmt: skip


def _version(document: Mapping[str, Any], where: str) -> int:
    version = document.get("version", 1)
    if isinstance(version, bool) or version not in _TABLES:
        raise WiringError(f"{where}: unknown config version {version!r} (expected 1, 2 or 3)")
    return int(version)


def _registry(document: Mapping[str, Any], version: int) -> Mapping[str, Any] | None:
    node: Any = document
    for key in _TABLES[version]:
        node = node.get(key) if isinstance(node, Mapping) else None
    return node if isinstance(node, Mapping) else None


def _merged(main: dict[str, Any], imports: Sequence[str], where: str) -> dict[str, Any]:
    """containerd merges ``imports`` over the main file, later files winning, per key."""

    def merge(into: dict[str, Any], other: Mapping[str, Any]) -> None:
        for key, value in other.items():
            if isinstance(value, Mapping) and isinstance(into.get(key), dict):
                merge(into[key], value)
            else:
                into[key] = value

    for n, text in enumerate(imports):
        merge(main, _parse(text, f"{where} (import {n + 1})"))
    return main


def _refuse_legacy(registry: Mapping[str, Any], table: str, where: str) -> tuple[str, ...]:
    mirrors = registry.get("mirrors") or {}
    if mirrors:
        names = ", ".join(sorted(mirrors))
        raise WiringError(
            f"{where}: remove the legacy {table[:-1]}.mirrors] entries ({names}) and put them "
            "in hosts.toml files: containerd refuses mirrors together with config_path"
        )
    configs = registry.get("configs") or {}
    tls = sorted(host for host, entry in configs.items() if isinstance(entry, Mapping)
                 and entry.get("tls"))  # fmt: skip
    if tls:
        raise WiringError(
            f"{where}: move {table[:-1]}.configs.<host>.tls] of {', '.join(tls)} into "
            "hosts.toml (ca, client, skip_verify): containerd refuses it together with config_path"
        )
    auth = sorted(host for host, entry in configs.items() if isinstance(entry, Mapping)
                  and entry.get("auth"))  # fmt: skip
    if auth:
        return (f"{table[:-1]}.configs.<host>.auth] for {', '.join(auth)} is deprecated but "
                "still used by containerd with config_path: kept",)  # fmt: skip
    return ()


def effective_hosts_dir(
    text: str,
    *,
    containerd_version: tuple[int, int] | None = None,
    where: str = "/etc/containerd/config.toml",
    imports: Sequence[str] = (),
) -> Wiring:
    """The hosts directory containerd reads, or ``WiringError`` saying what to add where.

    ``containerd_version`` (major, minor) matters only when ``config_path`` is absent: the
    2.2 default then applies; unknown (None) is treated as older, because guessing wrong
    means a cache that is silently bypassed. An explicit ``config_path = ""`` switches
    hosts files off on every version. ``where`` names the file in messages; ``imports``
    are the texts of the files its ``imports`` list names, in that order.
    """
    document = _merged(_parse(text, where), imports, where)
    version = _version(document, where)
    table = registry_table(version)
    registry = _registry(document, version) or {}
    notes = _refuse_legacy(registry, table, where)
    value = registry.get("config_path")
    if value is not None and not isinstance(value, str):
        raise WiringError(f"{where}: config_path in {table} must be a string, got {value!r}")
    if value:
        return Wiring(value.split(":")[0], table, "config_path", notes)
    if value is None and containerd_version is not None and containerd_version >= DEFAULT_SINCE:
        return Wiring(DEFAULT_HOSTS_DIR, table, "default", notes)
    state = "is empty" if value == "" else "is not set"
    raise WiringError(
        f"{where}: config_path {state}, so containerd ignores hosts.toml files: add "
        f'`config_path = "{DEFAULT_HOSTS_DIR}"` under {table} and restart containerd'
    )


def config_path_lines(text: str, hosts_dir: str = DEFAULT_HOSTS_DIR) -> str:
    """The exact line(s) to add to ``text`` so containerd reads ``hosts_dir``.

    Only the key when the file already has the registry table (a second header would be
    invalid TOML), the header and the key otherwise.
    """
    version = _version(_parse(text, "config.toml"), "config.toml")
    key = f'config_path = "{hosts_dir}"'
    if registry_table(version) in _header_lines(text):
        return f"  {key}\n"
    return f"{registry_table(version)}\n  {key}\n"


def _header_lines(text: str) -> list[str]:
    """Lines stripped; table headers also without blanks and with ``'`` as ``"``.

    containerd 2.x writes ``[plugins.'io.containerd.cri.v1.images'.registry]``.
    """
    lines = [line.strip() for line in text.splitlines()]
    return [
        line.replace("'", '"').replace(" ", "") if line.startswith("[") else line for line in lines
    ]


def with_config_path(text: str, hosts_dir: str = DEFAULT_HOSTS_DIR) -> str:
    """``text`` with ``config_path`` set to ``hosts_dir`` (the opt-in write), verified.

    Replaces an existing ``config_path`` line of the registry table, else adds the key under
    its header, else appends the table. The result is parsed again and must answer
    ``hosts_dir``: a layout this line edit cannot handle (the table written as dotted keys
    or inline tables) raises instead of writing a broken file.
    """
    document = _parse(text, "config.toml")
    version = _version(document, "config.toml")
    header = registry_table(version)
    _refuse_legacy(_registry(document, version) or {}, header, "config.toml")
    lines = text.splitlines(keepends=True)
    key = f'config_path = "{hosts_dir}"\n'
    stripped = _header_lines(text)
    if header in stripped:
        start = stripped.index(header)
        end = next((i for i in range(start + 1, len(lines)) if stripped[i].startswith("[")),
                   len(lines))  # fmt: skip
        existing = [i for i in range(start + 1, end)
                    if stripped[i].split("=")[0].strip() == "config_path"]  # fmt: skip
        indent = " " * (len(lines[start]) - len(lines[start].lstrip()) + 2)
        if existing:
            lines[existing[0]] = indent + key
        else:
            lines.insert(start + 1, indent + key)
        result = "".join(lines)
    else:
        result = text + ("" if text.endswith("\n") or not text else "\n") + f"\n{header}\n  {key}"
    try:
        found = effective_hosts_dir(result).hosts_dir
    except WiringError as exc:
        raise WiringError(
            f"cannot set config_path by a line edit ({exc}); add it by hand"
        ) from None
    if found != hosts_dir:
        raise WiringError(f"cannot set config_path by a line edit (it still reads {found}); "
                          "add it by hand")  # fmt: skip
    return result
