"""``cluster:`` configuration: the issue's keys, their defaults and one-line errors."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from cachesvc.config import parse_duration
from cachesvc.config.cluster import ClusterTLS, DnsName, parse_cluster
from cachesvc.config.peeraddress import PeerAddress
from cachesvc.errors import ConfigError


@pytest.fixture
def token(tmp_path: Path) -> Path:
    path = tmp_path / "token"
    path.write_text("new-token\nold-token\n")
    return path


def cluster(token: Path, **keys: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "listen": "127.0.0.2:5001",
        "peers": ["127.0.0.2:5001", "127.0.0.3:5001"],
        "token_file": str(token),
    }
    data.update(keys)
    return {k: v for k, v in data.items() if v is not None}


def error_of(data: object) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        parse_cluster(data, "cluster")
    assert "\n" not in str(info.value)
    return info.value


def test_static_peers_with_defaults(token: Path) -> None:
    config = parse_cluster(cluster(token), "cluster")
    assert config.listen == config.advertise == PeerAddress("127.0.0.2", 5001)
    assert config.peers == (PeerAddress("127.0.0.2", 5001), PeerAddress("127.0.0.3", 5001))
    assert config.peers_dns is None
    assert config.dns_servers == ()
    assert (config.refresh, config.fanout, config.block_for) == (10.0, 8, 300.0)
    assert config.token_file == token
    assert config.tls is None


def test_the_issue_example_with_dns(token: Path, tmp_path: Path) -> None:
    for name in ("cert.pem", "key.pem", "ca.pem"):
        (tmp_path / name).write_text("x")
    data = cluster(
        token,
        listen="0.0.0.0:5001",
        advertise="10.0.3.7:5001",
        peers=None,
        peers_dns="cachesvc-peers.cachesvc.svc.cluster.local:5001",
        dns_servers=["127.0.0.1:5353", "[::1]:53"],
        refresh="1m30s",
        fanout=2,
        block_for="90s",
        tls={"cert_file": str(tmp_path / "cert.pem"), "key_file": str(tmp_path / "key.pem"),
             "ca_file": str(tmp_path / "ca.pem")},
    )  # fmt: skip
    config = parse_cluster(data, "cluster")
    assert config.listen.is_wildcard
    assert str(config.advertise) == "10.0.3.7:5001"
    assert config.peers_dns == DnsName("cachesvc-peers.cachesvc.svc.cluster.local", 5001)
    assert config.peers == ()
    assert [str(s) for s in config.dns_servers] == ["127.0.0.1:5353", "[::1]:53"]
    assert (config.refresh, config.fanout, config.block_for) == (90.0, 2, 90.0)
    assert config.tls == ClusterTLS(tmp_path / "cert.pem", tmp_path / "key.pem", tmp_path / "ca.pem")


def test_ipv6_members_are_normalized(token: Path) -> None:
    config = parse_cluster(cluster(token, listen="[::0001]:5001", peers=["[fd00:0::7]:5001"]), "c")
    assert str(config.advertise) == "[::1]:5001"
    assert config.peers == (PeerAddress("fd00::7", 5001),)


@pytest.mark.parametrize(
    ("keys", "where", "words"),
    [
        ({"peers": None}, "cluster", "neither is set"),
        ({"peers_dns": "peers.test:5001"}, "cluster", "both are set"),
        ({"listen": "0.0.0.0:5001"}, "cluster.advertise", "required when listen is a wildcard"),
        ({"listen": "[::]:5001"}, "cluster.advertise", "required when listen is a wildcard"),
        ({"advertise": "0.0.0.0:5001"}, "cluster.advertise", "wildcard"),
        ({"listen": "127.0.0.2"}, "cluster.listen", "host:port"),
        ({"listen": "127.0.0.2:0"}, "cluster.listen", "port out of range"),
        ({"listen": "127.0.0.2:70000"}, "cluster.listen", "port out of range"),
        ({"listen": "node-a:5001"}, "cluster.listen", "does not appear to be an IPv4 or IPv6"),
        ({"listen": "::1:5001"}, "cluster.listen", "needs brackets"),
        ({"peers": ["127.0.0.2:5001", "bad"]}, "cluster.peers[1]", "host:port"),
        ({"peers": ["127.0.0.2:5001", "127.0.0.2:5001"]}, "cluster.peers[1]", "already"),
        ({"peers": []}, "cluster.peers", "non-empty list"),
        ({"peers": "127.0.0.2:5001"}, "cluster.peers", "non-empty list"),
        ({"dns_servers": ["127.0.0.1:53"]}, "cluster.dns_servers", "only used with peers_dns"),
        ({"refresh": "5s"}, "cluster.refresh", "only used with peers_dns"),
        ({"peers": None, "peers_dns": "peers.test"}, "cluster.peers_dns", "name:port"),
        ({"peers": None, "peers_dns": "bad_-.test:1"}, "cluster.peers_dns", "not a DNS name"),
        ({"peers": None, "peers_dns": "10.0.0.1:1"}, "cluster.peers_dns", "not an address"),
        ({"peers": None, "peers_dns": "p.test:1", "dns_servers": ["dns.test:53"]},
         "cluster.dns_servers[0]", "IP:port"),
        ({"peers": None, "peers_dns": "p.test:1", "refresh": "0s"}, "cluster.refresh",
         "greater than zero"),
        ({"block_for": "soon"}, "cluster.block_for", "duration"),
        ({"fanout": 0}, "cluster.fanout", "from 1 to"),
        ({"fanout": True}, "cluster.fanout", "from 1 to"),
        ({"fanout": "8"}, "cluster.fanout", "from 1 to"),
        ({"token_file": None}, "cluster.token_file", "required"),
        ({"token_file": "/nonexistent/token"}, "cluster.token_file", "no such file"),
        ({"tls": {"cert_file": "/nonexistent/c"}}, "cluster.tls.key_file", "required"),
        ({"tls": {"cert": "x"}}, "cluster.tls.cert", "unknown key"),
        ({"peer": ["127.0.0.2:5001"]}, "cluster.peer", "unknown key"),
    ],
)  # fmt: skip
def test_invalid_settings_name_their_key(
    token: Path, keys: dict[str, Any], where: str, words: str
) -> None:
    data = cluster(token)
    for k, v in keys.items():
        if v is None:
            data.pop(k, None)
        else:
            data[k] = v
    error = error_of(data)
    assert error.key == where
    assert words in error.message


def test_a_token_file_without_a_token_is_an_error(tmp_path: Path) -> None:
    empty = tmp_path / "token"
    empty.write_text("\n  \n")
    error = error_of(cluster(empty))
    assert error.key == "cluster.token_file"
    assert "holds no token" in error.message


def test_the_token_never_appears_in_an_error(tmp_path: Path) -> None:
    binary = tmp_path / "token"
    binary.write_bytes(b"s3cret\xff\n")
    error = error_of(cluster(binary))
    assert "s3cret" not in str(error)


def test_a_missing_tls_file_is_named(token: Path, tmp_path: Path) -> None:
    (tmp_path / "cert.pem").write_text("x")
    tls = {"cert_file": str(tmp_path / "cert.pem"), "key_file": str(tmp_path / "key.pem")}
    error = error_of(cluster(token, tls=tls))
    assert error.key == "cluster.tls.key_file"


def test_not_a_mapping() -> None:
    assert error_of(["listen"]).key == "cluster"


@pytest.mark.parametrize("text", ["10s", "5m", "1h30m", "250ms", "7d", "1.5s", 30, 2.5])
def test_durations_agree_with_the_main_config(token: Path, text: object) -> None:
    data = cluster(token, peers=None, peers_dns="p.test:1", refresh=text, block_for=text)
    config = parse_cluster(data, "cluster")
    assert config.refresh == config.block_for == parse_duration(text, "x")


@pytest.mark.parametrize("text", ["10", "5 m", "m", "-1s", "1w", True])
def test_bad_durations_are_bad_in_both(token: Path, text: object) -> None:
    with pytest.raises(ConfigError):
        parse_duration(text, "x")
    assert error_of(cluster(token, block_for=text)).key == "cluster.block_for"
