"""The daemon side of containerd wiring on a node laid out as the DaemonSet mounts it.

A node is a directory: ``host/etc/containerd/config.toml`` and ``host/etc/containerd/certs.d``
(the init container sees them under ``--host-root host``). The commands run are the
DaemonSet's own (``cachesvc containerd-config ... --write``, the cleanup's ``--uninstall``),
through the CLI's entry point; the readiness checks run a real daemon.
"""

from __future__ import annotations

import tomllib
from pathlib import Path

import aiohttp
import pytest

from cachesvc.cli import main
from cachesvc.config import ListenAddress, parse_config
from cachesvc.ops.containerd import BACKUP_SUFFIX, HEADER
from tests.conftest import daemon_for, make_config
from tests.test_cli_admin import run_cli

V2 = '[plugins."io.containerd.grpc.v1.cri".registry]'
V3 = "[plugins.'io.containerd.cri.v1.images'.registry]"
CACHESVC_YAML = """\
listen: "127.0.0.1:5000"
registries:
  docker.io: {endpoints: ["https://registry-1.docker.io"]}
  ghcr.io: {endpoints: ["https://ghcr.io"]}
"""
THEIRS = """\
server = "https://registry-1.docker.io"
ca = "/etc/containerd/corp-ca.pem"

[host."https://mirror.corp.example"]
  capabilities = ["pull", "resolve"]
  skip_verify = false
"""


class Node:
    """A node's containerd files under ``root`` and the init container's command."""

    def __init__(self, tmp_path: Path, config_toml: str) -> None:
        self.root = tmp_path / "host"
        self.certs = self.root / "etc/containerd/certs.d"
        self.certs.mkdir(parents=True)
        self.config_toml = self.root / "etc/containerd/config.toml"
        self.config_toml.write_text(config_toml)
        self.cachesvc_yaml = tmp_path / "cachesvc.yaml"
        self.cachesvc_yaml.write_text(CACHESVC_YAML)

    def run(self, *extra: str, config: bool = True) -> int:
        """``cachesvc containerd-config`` as deploy/daemonset.yaml runs it, plus ``extra``."""
        args = ["containerd-config", "--containerd-config", str(self.config_toml),
                "--host-root", str(self.root), *extra]  # fmt: skip
        return main(args + (["--config", str(self.cachesvc_yaml)] if config else []))

    def hosts(self, registry: str) -> Path:
        return self.certs / registry / "hosts.toml"


def v2_with_config_path(path: str = "/etc/containerd/certs.d") -> str:
    return f'version = 2\n\n{V2}\n  config_path = "{path}"\n'


def test_a_containerd_that_reads_no_hosts_files_is_refused_with_what_to_add(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    node = Node(tmp_path, f"version = 2\n\n{V2}\n")
    assert node.run("--write") == 1
    err = capsys.readouterr().err
    assert f'add `config_path = "/etc/containerd/certs.d"` under {V2}' in err
    assert "restart containerd" in err
    assert list(node.certs.iterdir()) == []


def test_the_2_2_default_is_written_into(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    node = Node(tmp_path, f"version = 3\n\n{V3}\n")
    assert node.run("--write") == 1  # without the version: treated as older, refused
    assert node.run("--write", "--containerd-version", "2.2") == 0
    out = capsys.readouterr().out
    assert "/etc/containerd/certs.d (default)" in out
    document = tomllib.loads(node.hosts("docker.io").read_text())
    assert list(document["host"]) == ["http://127.0.0.1:5000"]
    assert node.hosts("ghcr.io").read_text().startswith(HEADER)


def test_a_file_cachesvc_did_not_write_is_backed_up_merged_and_put_back(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    node = Node(tmp_path, v2_with_config_path())
    node.hosts("docker.io").parent.mkdir()
    node.hosts("docker.io").write_text(THEIRS)
    assert node.run("--write") == 0
    assert "merged" in capsys.readouterr().out
    backup = node.hosts("docker.io").with_name("hosts.toml" + BACKUP_SUFFIX)
    assert backup.read_text() == THEIRS
    merged = node.hosts("docker.io").read_text()
    document = tomllib.loads(merged)
    # Ours first (containerd tries hosts in order), theirs kept with its settings.
    assert list(document["host"]) == ["http://127.0.0.1:5000", "https://mirror.corp.example"]
    assert document["host"]["https://mirror.corp.example"]["skip_verify"] is False
    assert (document["server"], document["ca"]) == ("https://registry-1.docker.io",
                                                    "/etc/containerd/corp-ca.pem")  # fmt: skip
    # Again (every pod start): the same file, the backup still the original.
    assert node.run("--write") == 0
    assert node.hosts("docker.io").read_text() == merged
    assert backup.read_text() == THEIRS
    # Uninstall (deploy/cleanup: no --config): theirs back byte for byte, ours gone.
    assert node.run("--uninstall", config=False) == 0
    out = capsys.readouterr().out
    assert node.hosts("docker.io").read_text() == THEIRS
    assert not backup.exists()
    assert not (node.certs / "ghcr.io").exists()
    assert "restored" in out
    assert "removed" in out


def test_a_file_that_already_lists_the_mirror_or_is_not_toml_is_kept(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    node = Node(tmp_path, v2_with_config_path())
    listed = 'server = "https://ghcr.io"\n[host."http://127.0.0.1:5000"]\n  capabilities = ["pull"]\n'
    broken = 'server = "https://registry-1.docker.io\n'
    for registry, text in (("ghcr.io", listed), ("docker.io", broken)):
        node.hosts(registry).parent.mkdir()
        node.hosts(registry).write_text(text)
    assert node.run("--write") == 0
    out = capsys.readouterr().out
    assert node.hosts("ghcr.io").read_text() == listed
    assert node.hosts("docker.io").read_text() == broken
    assert "already lists http://127.0.0.1:5000" in out
    assert "not valid TOML" in out
    assert list(node.certs.glob(f"*/*{BACKUP_SUFFIX}")) == []
    assert node.run("--uninstall", config=False) == 0
    assert node.hosts("docker.io").read_text() == broken  # not ours: never removed


def test_a_hosts_directory_not_mounted_or_outside_the_host_root_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    node = Node(tmp_path, v2_with_config_path("/var/lib/rancher/k3s/agent/etc/containerd/certs.d"))
    assert node.run("--write") == 1
    assert "is not mounted at" in capsys.readouterr().err
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (node.root / "etc/containerd/certs.d").rmdir()
    (node.root / "etc/containerd/certs.d").symlink_to(outside)
    node.config_toml.write_text(v2_with_config_path())
    assert node.run("--write") == 1
    assert f"is not under {node.root}" in capsys.readouterr().err
    assert list(outside.iterdir()) == []


def test_write_config_path_sets_it_and_says_to_restart_containerd(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    node = Node(tmp_path, "version = 2\n\n[plugins]\n")
    assert node.run("--write", "--write-config-path") == 1
    err = capsys.readouterr().err
    assert "restart containerd" in err
    assert 'config_path = "/etc/containerd/certs.d"' in node.config_toml.read_text()
    assert node.run("--write", "--write-config-path") == 0  # set now: the edit is not redone
    assert node.config_toml.read_text().count("config_path") == 1
    assert node.hosts("docker.io").exists()


def test_write_without_a_directory_needs_the_containerd_config(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["containerd-config", "--write"]) == 2
    assert "--containerd-config" in capsys.readouterr().err


# -- the daemon's own check: /readyz and cachesvc_containerd_wired ------------------------


async def _ready(http: aiohttp.ClientSession, url: str) -> tuple[int, dict[str, object]]:
    async with http.get(url + "/readyz") as resp:
        return resp.status, await resp.json()


async def test_readiness_reports_and_requires_the_wiring_when_checked(
    tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    node = Node(tmp_path, v2_with_config_path())
    check = {"config": str(node.config_toml), "host_root": str(node.root)}
    config = make_config(tmp_path / "store", {"docker.io": ["https://registry-1.docker.io"],
                                              "ghcr.io": ["https://ghcr.io"]},
                         containerd=check)  # fmt: skip
    async with daemon_for(config) as daemon:
        listen = ListenAddress("127.0.0.1", daemon.mirror_address[1])  # type: ignore[index]
        status, body = await _ready(http, daemon.admin_url)
        assert status == 503
        assert body["status"] == "not wired"
        detail = body["containerd"]
        assert isinstance(detail, dict)
        assert detail["hosts_dir"] == "/etc/containerd/certs.d"
        assert any("docker.io: no " in p for p in detail["problems"])
        # `cachesvc status` says which problems, not only "not wired".
        code, out, _ = await run_cli("status", "--admin", daemon.admin_url)
        assert code == 1
        assert ("containerd:      NOT wired (hosts directory /etc/containerd/certs.d): pulls on "
                "this node bypass the cache") in out  # fmt: skip
        for problem in detail["problems"]:  # type: ignore[union-attr]
            assert f"\n  {problem}\n" in out
        gauge = daemon.metrics.registry.get_sample_value
        assert gauge("cachesvc_containerd_wired") == 0
        # The init container's write, for this daemon's port: wired.
        assert main(["containerd-config", "--containerd-config", str(node.config_toml),
                     "--host-root", str(node.root), "--write", "--mirror-url",
                     daemon.mirror_url, "--config", str(_yaml(tmp_path, config))]) == 0  # fmt: skip
        await daemon.wiring.refresh(listen)
        status, body = await _ready(http, daemon.admin_url)
        assert (status, body["status"]) == (200, "ready")
        assert gauge("cachesvc_containerd_wired") == 1
        code, out, _ = await run_cli("status", "--admin", daemon.admin_url)
        assert code == 0
        assert "containerd:      wired (hosts directory /etc/containerd/certs.d)" in out
        # One registry's file pointing elsewhere (a stale port): not wired again, named.
        node.hosts("ghcr.io").write_text('[host."http://127.0.0.1:1"]\n')
        await daemon.wiring.refresh(listen)
        status, body = await _ready(http, daemon.admin_url)
        assert status == 503
        assert gauge("cachesvc_containerd_wired") == 0
        assert body["containerd"]["problems"] == [  # type: ignore[index]
            f"ghcr.io: {node.hosts('ghcr.io')} has no [host] for this mirror ({listen})"
        ]


async def test_unchecked_wiring_stays_ready_and_says_so(
    tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    config = make_config(tmp_path / "store", {"r.test": ["https://r.test"]})
    async with daemon_for(config) as daemon:
        status, body = await _ready(http, daemon.admin_url)
        assert status == 200
        assert body["containerd"] == {"checked": False, "wired": None,
                                      "problems": ["not checked: containerd.config is unset"]}  # fmt: skip
        _, out, _ = await run_cli("status", "--admin", daemon.admin_url)
        assert "containerd:      not checked: containerd.config is unset" in out
        assert daemon.metrics.registry.get_sample_value("cachesvc_containerd_wired") == 0


def _yaml(tmp_path: Path, config: object) -> Path:
    """The registries of ``config`` as a cachesvc config file for the CLI."""
    names = sorted(config.registries)  # type: ignore[attr-defined]
    path = tmp_path / "daemon.yaml"
    path.write_text("registries:\n" + "".join(
        f"  {n}: {{endpoints: [\"https://{n}\"]}}\n" for n in names))  # fmt: skip
    assert parse_config({"registries": {n: {"endpoints": [f"https://{n}"]} for n in names}})
    return path
