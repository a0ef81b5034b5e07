"""Configuration: the contract keys, defaults, and one clear error per kind of mistake."""

from __future__ import annotations

import copy
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from cachesvc.config import (
    ListenAddress,
    default_config,
    parse_config,
    parse_duration,
    parse_size,
    parse_yaml,
)
from cachesvc.errors import ConfigError
from tests.peers.ports import free_port

CONTRACT = """
listen: "127.0.0.1:5000"
admin:
  listen: "127.0.0.1:5050"
storage:
  root: "/var/lib/cachesvc"
default_registry: "docker.io"
registries:
  docker.io:
    endpoints: ["https://registry-1.docker.io"]
    tag_ttl: "60s"
  "127.0.0.1:5001":
    endpoints: ["http://127.0.0.1:5001"]
"""


def test_the_design_contract_parses_as_written() -> None:
    config = parse_yaml(CONTRACT)
    assert config.listen == ListenAddress("127.0.0.1", 5000)
    assert config.admin.listen == ListenAddress("127.0.0.1", 5050)
    assert config.storage.root == Path("/var/lib/cachesvc")
    assert config.default_registry == "docker.io"
    assert config.registries["docker.io"].endpoints == ("https://registry-1.docker.io",)
    assert config.registries["docker.io"].tag_ttl == 60
    assert config.registries["127.0.0.1:5001"].tag_ttl == 60  # the documented default


def test_embedded_default_mirrors_the_big_public_registries() -> None:
    config = default_config()
    assert set(config.registries) == {"docker.io", "ghcr.io", "quay.io", "registry.k8s.io"}
    assert str(config.listen) == "127.0.0.1:5000"
    assert str(config.admin.listen) == "127.0.0.1:5050"


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("listen: 5000\nregistries: {r.io: {endpoints: ['https://r.io']}}", "listen"),
        ("listen: 'x:99999'\nregistries: {r.io: {endpoints: ['https://r.io']}}", "listen"),
        ("listen: 'example.com:80'\nregistries: {r.io: {endpoints: ['https://r.io']}}", "listen"),
        ("registries: {}", "registries"),
        ("registries: {r.io: {endpoints: []}}", "registries.r.io.endpoints"),
        ("registries: {r.io: {endpoints: ['ftp://r.io']}}", "registries.r.io.endpoints[0]"),
        ("registries: {r.io: {endpoints: ['https://u:p@r.io']}}", "registries.r.io.endpoints[0]"),
        ("registries: {r.io: {endpoints: ['https://r.io'], tag_ttl: soon}}", "registries.r.io.tag_ttl"),
        ("registries: {r.io: {endpoints: ['https://r.io'], tagttl: 5s}}", "registries.r.io.tagttl"),
        ("registries: {'bad host!': {endpoints: ['https://r.io']}}", "registries.bad host!"),
        ("registries: {r.io: {endpoints: ['https://r.io']}}\ndefault_registry: x.io", "default_registry"),
        ("registries: {r.io: {endpoints: ['https://r.io']}}\nstorage: {max_size: -1}", "storage.max_size"),
        ("registries: {r.io: {endpoints: ['https://r.io']}}\nstorage: {root: ''}", "storage.root"),
        ("registries: {r.io: {endpoints: ['https://r.io']}}\ntimeouts: {connect: 0s}", "timeouts.connect"),
        ("registries: {r.io: {endpoints: ['https://r.io']}}\nlog: {level: loud}", "log.level"),
        ("registries: {r.io: {endpoints: ['https://r.io']}}\nevent_loop: trio", "event_loop"),
        ("registries: {r.io: {endpoints: ['https://r.io']}}\nlisten_addr: ':1'", "listen_addr"),
        ("- a\n- b", ""),
        ("registries: [", ""),
    ],
)
def test_each_mistake_names_its_key(text: str, key: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_yaml(text)
    assert info.value.key == key


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("60s", 60), ("5m", 300), ("1h30m", 5400), ("7d", 604800), ("250ms", 0.25), (10, 10)],
)
def test_durations(text: object, seconds: float) -> None:
    assert parse_duration(text, "k") == seconds


@pytest.mark.parametrize(("text", "size"), [("50GiB", 50 * 2**30), ("500MB", 500 * 10**6), (1024, 1024)])
def test_sizes(text: object, size: int) -> None:
    assert parse_size(text, "k") == size


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cachesvc", *args],
        capture_output=True,
        text=True,
        timeout=30,
        env=env,
        check=False,
    )


def test_invalid_file_is_one_line_and_exit_2(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("registries: {r.io: {endpoints: ['https://r.io'], tag_ttl: soon}}\n")
    result = run_cli("serve", "--config", str(bad))
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1
    assert "registries.r.io.tag_ttl" in result.stderr
    assert "Traceback" not in result.stderr


def test_missing_file_is_a_clear_error(tmp_path: Path) -> None:
    result = run_cli("serve", "--config", str(tmp_path / "nope.yaml"))
    assert result.returncode == 2
    assert "cannot read config file" in result.stderr
    assert "Traceback" not in result.stderr


def test_config_from_environment(tmp_path: Path) -> None:
    good = tmp_path / "c.yaml"
    good.write_text(CONTRACT)
    import os

    result = run_cli("check-config", env={**os.environ, "CACHESVC_CONFIG": str(good)})
    assert result.returncode == 0, result.stderr
    assert "2 registries" in result.stdout


def test_unknown_cli_flag_is_usage_error() -> None:
    result = run_cli("serve", "--bogus")
    assert result.returncode == 2
    assert "usage" in result.stderr


def test_containerd_config_writes_hosts_toml(tmp_path: Path) -> None:
    good = tmp_path / "c.yaml"
    good.write_text(CONTRACT)
    result = run_cli("containerd-config", "--config", str(good), "--write", str(tmp_path / "certs.d"))
    assert result.returncode == 0, result.stderr
    text = (tmp_path / "certs.d" / "docker.io" / "hosts.toml").read_text()
    assert 'server = "https://registry-1.docker.io"' in text
    assert '[host."http://127.0.0.1:5000"]' in text
    assert 'capabilities = ["pull", "resolve"]' in text
    assert (tmp_path / "certs.d" / "127.0.0.1:5001" / "hosts.toml").exists()


def test_storage_root_that_is_a_file_is_a_clear_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    cfg = tmp_path / "c.yaml"
    cfg.write_text(
        f"listen: '127.0.0.1:{free_port()}'\nadmin: {{listen: '127.0.0.1:{free_port()}'}}\n"
        f"storage: {{root: '{blocker}'}}\n"
        "registries: {r.io: {endpoints: ['https://r.io']}}\ndefault_registry: r.io\n"
    )
    result = run_cli("serve", "--config", str(cfg))
    assert result.returncode == 1
    assert "cannot use storage root" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    "url", ["ftp://x", 'http://x"y', "http://x y", "http://x/?a=b", "not a url", "http://"]
)
def test_containerd_config_refuses_a_bad_mirror_url(url: str) -> None:
    result = run_cli("containerd-config", "--mirror-url", url)
    assert result.returncode == 2
    assert "--mirror-url" in result.stderr
    assert "Traceback" not in result.stderr
    assert result.stdout == ""


def test_containerd_config_unwritable_directory_is_a_clear_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    result = run_cli("containerd-config", "--write", str(blocker / "certs.d"))
    assert result.returncode == 1
    assert "cannot write hosts.toml files" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_port_in_use_is_a_clear_error(tmp_path: Path) -> None:
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        cfg = tmp_path / "c.yaml"
        cfg.write_text(
            f"listen: '127.0.0.1:{port}'\nadmin: {{listen: '127.0.0.1:{free_port()}'}}\n"
            f"storage: {{root: '{tmp_path / 'store'}'}}\n"
            "registries: {r.io: {endpoints: ['https://r.io']}}\ndefault_registry: r.io\n"
        )
        result = run_cli("serve", "--config", str(cfg))
    assert result.returncode == 1
    assert f"cannot listen on 127.0.0.1:{port} (listen)" in result.stderr
    assert "Traceback" not in result.stderr
    assert "Unclosed" not in result.stderr


@pytest.mark.parametrize("content", [None, "not a certificate\n"])
def test_check_config_loads_tls_files_as_serve_does(tmp_path: Path, content: str | None) -> None:
    ca = tmp_path / "ca.pem"
    if content is not None:
        ca.write_text(content)
    config = tmp_path / "c.yaml"
    config.write_text(f"registries: {{r.io: {{endpoints: ['https://r.io'], ca_file: '{ca}'}}}}\n")
    # (serve refuses it the same way: test_upstream_tls_and_config)
    result = run_cli("check-config", "--config", str(config))
    assert result.returncode == 2, result.stderr
    assert "registries.r.io.ca_file" in result.stderr
    assert "Traceback" not in result.stderr


def without_proxies(**variables: str) -> dict[str, str]:
    """The runner's environment without its proxy variables, plus ``variables``."""
    env = {k: v for k, v in os.environ.items() if not k.lower().endswith("_proxy")}
    return {**env, **variables}


def test_check_config_refuses_an_unusable_environment_proxy_as_serve_does(
    tmp_path: Path,
) -> None:
    config = tmp_path / "c.yaml"
    config.write_text("registries: {r.io: {endpoints: ['https://r.io']}}\n")
    env = without_proxies(HTTPS_PROXY="https://user:s3cret@proxy.corp:3128")
    # (serve stops the same way: the CLI reads the variables for both commands)
    result = run_cli("check-config", "--config", str(config), env=env)
    assert result.returncode == 2, result.stdout
    assert "$HTTPS_PROXY" in result.stderr
    assert "s3cret" not in result.stderr
    assert "Traceback" not in result.stderr


def test_containerd_config_does_not_care_about_proxy_variables(tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text("registries: {r.io: {endpoints: ['https://r.io']}}\n")
    # Unusable for serve, irrelevant here.
    env = without_proxies(HTTPS_PROXY="https://proxy.corp:3128")
    result = run_cli("containerd-config", "--config", str(config), env=env)
    assert result.returncode == 0, result.stderr
    assert "r.io/hosts.toml" in result.stdout


# -- the documented defaults are the model's ------------------------------------------------

DOCUMENTED = [Path(__file__).parent.parent / p for p in ("README.md", "docs/upstream.md",
                                                          "docs/operations.md")]  # fmt: skip
_BASE = {"registries": {"r.test": {"endpoints": ["https://r.test"]}}}


def documented_defaults() -> list[tuple[str, str, object]]:
    """(file, key path, value) for every row of a ``| key | default | ...`` table whose
    default is a literal; a registry table (``unset / 0 means``) puts keys under r.test."""
    found: list[tuple[str, str, object]] = []
    for path in DOCUMENTED:
        prefix: str | None = None
        for line in path.read_text(encoding="utf-8").splitlines():
            if line.startswith("| key | default |"):
                prefix = "registries.r.test." if "unset / 0 means" in line else ""
                continue
            if prefix is None or not line.startswith("| `"):
                prefix = None if not line.startswith("|") else prefix
                continue
            key_cell, default_cell = line.strip("|").split("|")[:2]
            keys = re.findall(r"`([^`]+)`", key_cell)
            defaults = re.findall(r"`([^`]*)`", default_cell)
            if default_cell.strip().startswith("`") and len(keys) == len(defaults):
                for key, text in zip(keys, defaults, strict=True):
                    found.append((path.name, prefix + key, yaml.safe_load(text or '""')))
    return found


def with_key(path: str, value: object) -> dict[str, object]:
    data = copy.deepcopy(_BASE)
    *parents, last = path.replace("registries.r.test.", "registries.r\0test.").split(".")
    node: dict[str, Any] = data
    for part in parents:
        node = node.setdefault(part.replace("\0", "."), {})
    node[last] = value
    return data


def test_the_documented_defaults_are_what_an_absent_key_gives() -> None:
    """Each default is written once, in cachesvc.config.model: setting a key to the value
    the docs give as its default must change nothing, in every table that documents one."""
    rows = documented_defaults()
    # the tables were found and read (23: log.format's default became 'unset', issue 15)
    assert len({key for _, key, _ in rows}) >= 23
    unset = parse_config(_BASE)
    for source, key, value in rows:
        assert parse_config(with_key(key, value)) == unset, (source, key, value)
