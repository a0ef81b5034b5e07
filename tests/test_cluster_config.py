"""``cluster:`` inside the whole configuration: parsed into Config, its listener distinct,
and ``cachesvc serve`` refusing a bad section on one line with exit status 2."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from cachesvc.config import parse_config
from cachesvc.config.peeraddress import PeerAddress
from cachesvc.errors import ConfigError


def config(tmp_path: Path, **cluster: Any) -> dict[str, Any]:
    token = tmp_path / "token"
    token.write_text("secret\n")
    section = {"listen": "127.0.0.2:5001", "peers": ["127.0.0.3:5001"], "token_file": str(token)}
    section.update(cluster)
    return {
        "listen": "127.0.0.1:5000",
        "admin": {"listen": "127.0.0.1:5050"},
        "registries": {"r.test": {"endpoints": ["http://127.0.0.1:1"]}},
        "cluster": {k: v for k, v in section.items() if v is not None},
    }


def test_no_cluster_section_means_no_cluster_mode(tmp_path: Path) -> None:
    data = config(tmp_path)
    del data["cluster"]
    assert parse_config(data).cluster is None


def test_the_cluster_section_lands_in_config(tmp_path: Path) -> None:
    cluster = parse_config(config(tmp_path)).cluster
    assert cluster is not None
    assert cluster.advertise == PeerAddress("127.0.0.2", 5001)


@pytest.mark.parametrize(
    ("listen", "clashes_with"),
    [("127.0.0.1:5000", "listen"), ("0.0.0.0:5050", "admin.listen")],
)
def test_cluster_listen_must_differ_from_the_other_listeners(
    tmp_path: Path, listen: str, clashes_with: str
) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(config(tmp_path, listen=listen, advertise="10.0.3.7:5001"))
    assert info.value.key == "cluster.listen"
    assert clashes_with in str(info.value)


@pytest.mark.parametrize(
    ("change", "key"),
    [
        ({"peers": None}, "cluster"),  # neither peers nor peers_dns
        ({"peers_dns": "peers.example:5001"}, "cluster"),  # both
        ({"listen": "0.0.0.0:5001"}, "cluster.advertise"),  # wildcard without advertise
        ({"token_file": "/nonexistent/token"}, "cluster.token_file"),
    ],
)
def test_serve_refuses_invalid_combinations_on_one_line_with_status_2(
    tmp_path: Path, change: dict[str, Any], key: str
) -> None:
    path = tmp_path / "cachesvc.yaml"
    path.write_text(yaml.safe_dump(config(tmp_path, **change)))
    done = subprocess.run(
        [sys.executable, "-m", "cachesvc", "serve", "--config", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2, done.stderr
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, done.stderr
    assert key in lines[0]
