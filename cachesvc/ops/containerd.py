"""containerd wiring: the hosts.toml files that send a node's pulls through cachesvc."""

from __future__ import annotations

from pathlib import Path

from cachesvc.config import Config

# Where containerd's API lives for registries whose name is not their API host.
_SERVER = {"docker.io": "https://registry-1.docker.io"}


def hosts_toml(config: Config, registry: str, mirror_url: str) -> str:
    """The ``certs.d/<registry>/hosts.toml`` that tries cachesvc first, the registry last."""
    endpoints = config.registries[registry].endpoints
    server = _SERVER.get(registry, endpoints[-1])
    return (
        f"# Written by cachesvc: pulls of {registry} go through the node-local cache;\n"
        "# containerd falls back to the server below if cachesvc answers an error.\n"
        f'server = "{server}"\n'
        "\n"
        f'[host."{mirror_url}"]\n'
        '  capabilities = ["pull", "resolve"]\n'
    )


def write_hosts_dir(config: Config, directory: Path, mirror_url: str) -> list[Path]:
    """Write one hosts.toml per configured registry under ``directory``."""
    written = []
    for registry in sorted(config.registries):
        target = directory / registry / "hosts.toml"
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(hosts_toml(config, registry, mirror_url), encoding="utf-8")
        written.append(target)
    return written
