"""Policy configuration at load (one-line errors, exit 2), clients.allow by TCP peer address,
and hosts.toml for a registry under policy."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import dsa, ec

from cachesvc.config import parse_config
from cachesvc.errors import ConfigError
from cachesvc.ops.containerd import hosts_toml, uninstall_hosts_dir, write_hosts_dir
from tests.conftest import StartDaemon
from tests.fakes.registry import FakeRegistry
from tests.test_config import run_cli


def pem(tmp_path: Path, name: str, key: Any) -> Path:
    path = tmp_path / name
    path.write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    return path


def registry_with(**settings: object) -> dict[str, Any]:
    return {"registries": {"ccr.volces.com": {"endpoints": ["https://ccr.volces.com"], **settings}}}


def test_the_issue_example_parses(tmp_path: Path) -> None:
    key = pem(tmp_path, "release.pub", ec.generate_private_key(ec.SECP256R1()))
    config = parse_config(
        {
            "clients": {"allow": ["127.0.0.0/8", "::1/128", "10.0.0.0/8"]},
            **registry_with(
                allow=["dev-team/*", "platform/**"], verify={"keys": [str(key)], "mode": "enforce"}
            ),
        }
    )
    registry = config.registries["ccr.volces.com"]
    assert registry.allow is not None
    assert registry.allow.allows("dev-team/app")
    assert not registry.allow.allows("dev-team/app/x")
    assert registry.verify is not None
    assert registry.verify.keys == (key,)
    assert config.clients.allow is not None
    assert config.clients.allow.allows("::1")
    assert not config.clients.allow.allows("192.168.1.1")


def test_policy_is_unset_by_default() -> None:
    config = parse_config(registry_with())
    assert config.clients.allow is None
    assert config.registries["ccr.volces.com"].allow is None
    assert config.registries["ccr.volces.com"].verify is None


def bad_configs(tmp_path: Path) -> list[tuple[dict[str, Any], str]]:
    small = tmp_path / "dsa.pub"
    pem(tmp_path, "dsa.pub", dsa.generate_private_key(2048))
    good = pem(tmp_path, "good.pub", ec.generate_private_key(ec.SECP256R1()))
    garbage = tmp_path / "garbage.pub"
    garbage.write_text("not a key\n")
    return [
        ({"clients": {"allow": ["10.0.0.1/8"]}, **registry_with()}, "clients.allow[0]"),
        ({"clients": {"allow": ["not-a-network"]}, **registry_with()}, "clients.allow[0]"),
        ({"clients": {"allow": "10.0.0.0/8"}, **registry_with()}, "clients.allow"),
        (registry_with(allow=["dev-*"]), "registries.ccr.volces.com.allow[0]"),
        (registry_with(allow=["**/x"]), "registries.ccr.volces.com.allow[0]"),
        (registry_with(allow=[]), "registries.ccr.volces.com.allow"),
        (registry_with(verify={"keys": [str(tmp_path / "missing.pub")]}),
         "registries.ccr.volces.com.verify.keys[0]"),
        (registry_with(verify={"keys": [str(garbage)]}), "registries.ccr.volces.com.verify.keys[0]"),
        (registry_with(verify={"keys": [str(small)]}), "registries.ccr.volces.com.verify.keys[0]"),
        (registry_with(verify={"keys": []}), "registries.ccr.volces.com.verify.keys"),
        (registry_with(verify={"keys": [str(good)], "mode": "audit"}),
         "registries.ccr.volces.com.verify.mode"),
        (registry_with(verify={"keyz": []}), "registries.ccr.volces.com.verify.keyz"),
    ]  # fmt: skip


def test_bad_policy_values_name_their_key(tmp_path: Path) -> None:
    for data, key in bad_configs(tmp_path):
        with pytest.raises(ConfigError) as info:
            parse_config(data)
        assert info.value.key == key, (data, str(info.value))


def test_check_config_exits_2_with_one_line(tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text(
        "registries:\n  ccr.volces.com:\n    endpoints: ['https://ccr.volces.com']\n"
        f"    verify: {{keys: ['{tmp_path / 'nope.pub'}']}}\n"
    )
    result = run_cli("check-config", "--config", str(config))
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, lines
    assert "registries.ccr.volces.com.verify.keys[0]" in lines[0]
    assert "cannot read" in lines[0]


def test_hosts_toml_of_a_registry_under_policy_has_no_path_around_it() -> None:
    plain = parse_config(registry_with())
    text = hosts_toml(plain, "ccr.volces.com", "http://127.0.0.1:5000")
    assert 'server = "https://ccr.volces.com"' in text
    guarded = parse_config(registry_with(allow=["dev-team/*"]))
    text = hosts_toml(guarded, "ccr.volces.com", "http://127.0.0.1:5000")
    assert 'server = "http://127.0.0.1:5000"' in text
    assert "https://ccr.volces.com" not in text
    assert "under policy" in text


async def test_clients_outside_the_list_get_403_whatever_they_claim(
    fake: FakeRegistry, start_daemon: StartDaemon, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="cachesvc.access")
    digest, _ = fake.add_image("team/app", "v1", [os.urandom(100)])
    config = {"clients": {"allow": ["127.0.0.1/32", "::1/128"]}}
    async with start_daemon({"fake.test": [fake.url]}, **config) as daemon:
        url = f"{daemon.mirror_url}/v2/team/app/manifests/v1?ns=fake.test"
        inside = aiohttp.TCPConnector(local_addr=("127.0.0.1", 0))
        async with aiohttp.ClientSession(connector=inside) as http, http.get(url) as resp:
            assert resp.status == 200
        before = fake.count("GET", "/manifests/")
        outside = aiohttp.TCPConnector(local_addr=("127.0.0.9", 0))
        spoof = {"X-Forwarded-For": "127.0.0.1", "X-Real-IP": "127.0.0.1", "Forwarded": "for=127.0.0.1"}
        async with aiohttp.ClientSession(connector=outside) as http:
            for path in (url, f"{daemon.mirror_url}/v2/"):
                async with http.get(path, headers=spoof) as resp:
                    assert resp.status == 403
                    error = (await resp.json())["errors"][0]
                    assert error["code"] == "DENIED"
                    assert "127.0.0.9" in error["message"]
                    assert "clients.allow" in error["message"]
        assert fake.count("GET", "/manifests/") == before
        refusals = daemon.metrics.registry.get_sample_value(
            "cachesvc_policy_client_refusals_total"
        )
        assert refusals == 2
    lines = [getattr(r, "fields", {}) for r in caplog.records if r.name == "cachesvc.access"]
    denied = [line for line in lines if line.get("client") == "127.0.0.9"]
    assert denied
    assert all(line["policy"] == "clients" and line["status"] == 403 for line in denied)
    assert digest


def test_an_operators_hosts_toml_is_replaced_not_merged_under_policy(tmp_path: Path) -> None:
    """A merged file would keep the operator's server: a path around the policy."""
    target = tmp_path / "ccr.volces.com" / "hosts.toml"
    target.parent.mkdir()
    original = 'server = "https://ccr.volces.com"\n\n[host."https://cdn.example"]\n'
    target.write_text(original)
    guarded = parse_config(registry_with(verify=None, allow=["dev-team/*"]))
    [result] = write_hosts_dir(guarded, tmp_path, "http://127.0.0.1:5000")
    assert result.action == "written"
    text = target.read_text()
    assert 'server = "http://127.0.0.1:5000"' in text
    assert "ccr.volces.com\"" not in text
    assert "cdn.example" not in text
    assert (target.parent / "hosts.toml.cachesvc-backup").read_text() == original
    [undone] = uninstall_hosts_dir(tmp_path)
    assert undone.action == "restored"
    assert target.read_text() == original
