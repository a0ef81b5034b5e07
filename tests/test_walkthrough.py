"""The README's walkthrough and "Other clients" blocks, read from README.md and run as written.

The steps are taken from the README itself (so the two cannot drift) and changed only where
this machine must differ from a node: paths under a temp directory instead of ``/etc`` and
``/var/lib``, free loopback ports instead of 5000/5050, the test registry's URL as the
endpoint of ``ccr.volces.com`` (the name stays: containerd and podman reach it only through
cachesvc), the test's password, and a private containerd/podman (selected by environment
variables, so the ``ctr``/``podman`` command lines stay as printed). The upstream is the
distribution registry with basic auth, as in the e2e tests.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.peers.containerd import Containerd
from tests.peers.images import LayerSpec, OCIImage, build_image, push
from tests.peers.ports import free_port, http_answers, refused_url
from tests.peers.process import ManagedProcess, start_until_ready
from tests.peers.registry import BasicAuth, DistributionRegistry
from tests.peers.require import require
from tests.peers_fixtures import (
    CachesvcProcess,
    containerd,
    require_registry_and_skopeo,
    wait_until_quiet,
)

__all__ = ["containerd"]  # fixture imported for pytest

pytestmark = [pytest.mark.peers, pytest.mark.timeout(120)]

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()
ROBOT = BasicAuth("robot", "Walk-through-Pa55")
REF = "ccr.volces.com/team/app:1.0"


def _after(marker: str) -> str:
    """README text from ``marker`` to the next level-2 heading."""
    start = README.index(marker)
    end = README.find("\n## ", start)
    return README[start : end if end >= 0 else None]


def _blocks(text: str, language: str) -> list[str]:
    return re.findall(rf"^```{language}\n(.*?)^```$", text, re.M | re.S)


def _localize(block: str, replacements: dict[str, str]) -> str:
    """Apply ``replacements`` (each must occur somewhere in the README's blocks)."""
    for old, new in replacements.items():
        block = block.replace(old, new)
    return block


@dataclass(frozen=True)
class Private:
    """The private registry (distribution, basic auth) and the image pushed to it."""

    registry: DistributionRegistry
    image: OCIImage


@pytest.fixture(scope="module")
def private(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Private]:
    """The distribution registry with basic auth, holding ``team/app:1.0``."""
    require_registry_and_skopeo()
    base = tmp_path_factory.mktemp("walkthrough-registry")
    with DistributionRegistry(base / "registry", auth=ROBOT) as reg:
        image = build_image(base / "layout", "1.0", [LayerSpec(300_000, seed=71),
                                                     LayerSpec(2_000_000, seed=72)])  # fmt: skip
        assert push(image, None, reg.ref("team/app", "1.0"), creds=ROBOT) == image.digest
        yield Private(reg, image)


class Node:
    """The walkthrough's node: its directories, ports and environment."""

    def __init__(self, tmp_path: Path, registry: DistributionRegistry) -> None:
        self.mirror, self.admin = free_port(), free_port()
        self.etc = tmp_path / "etc-cachesvc"
        self.data = tmp_path / "var-lib-cachesvc"
        self.certs = tmp_path / "certs.d"
        self.replacements = {
            "/etc/cachesvc": str(self.etc),
            "/var/lib/cachesvc": str(self.data),
            "/etc/containerd/certs.d": str(self.certs),
            "127.0.0.1:5000": f"127.0.0.1:{self.mirror}",
            "127.0.0.1:5050": f"127.0.0.1:{self.admin}",
            "https://ccr.volces.com": registry.url,
            "REGISTRY_PASSWORD='your-password'": f"REGISTRY_PASSWORD='{ROBOT.password}'",
        }
        self.env = {k: v for k, v in os.environ.items()
                    if not k.startswith("CACHESVC_") and not k.lower().endswith("_proxy")}  # fmt: skip

    def run(self, block: str) -> str:
        """One README block in bash (``-euo pipefail``) in the checkout; its stdout."""
        done = subprocess.run(["bash", "-euo", "pipefail", "-c", block], cwd=ROOT, env=self.env,
                              capture_output=True, text=True, timeout=300, check=False)  # fmt: skip
        assert done.returncode == 0, f"{block}\n--- stdout\n{done.stdout}\n--- stderr\n{done.stderr}"
        return done.stdout


def _exports(block: str) -> list[str]:
    """The lines of a block that set the shell state later blocks rely on (``export …``)."""
    return [line for line in block.splitlines() if line.startswith("export ")]


@pytest.mark.timeout(300)
def test_the_five_minute_walkthrough_runs_as_written(
    private: Private, containerd: Containerd, tmp_path: Path
) -> None:
    registry, image = private.registry, private.image
    node = Node(tmp_path, registry)
    node.env.update(CONTAINERD_ADDRESS=str(containerd.address),
                    CONTAINERD_NAMESPACE=containerd.namespace,
                    CONTAINERD_SNAPSHOTTER=containerd.snapshotter)  # fmt: skip
    blocks = _blocks(_after("<!-- walkthrough:"), "sh")
    assert len(blocks) == 5, blocks
    setup, secret, serve, pull, hit = (_localize(b, node.replacements) for b in blocks)
    assert all(b.count("/etc/") == 0 for b in (setup, secret, serve, pull, hit))
    prelude = "\n".join(_exports(setup)) + "\n"

    node.run(setup)
    config = yaml.safe_load((node.etc / "config.yaml").read_text())
    assert config["registries"]["ccr.volces.com"]["endpoints"] == [registry.url]
    out = node.run(prelude + secret)
    assert out.startswith("configuration OK: 1 registry (ccr.volces.com), ")
    auth = json.loads((node.etc / "pull-secret" / "config.json").read_text())
    assert auth["auths"]["ccr.volces.com"]["auth"]  # base64 robot:password

    assert serve.strip().startswith("cachesvc serve --config ")
    daemon = start_until_ready(
        lambda: ManagedProcess(["bash", "-c", prelude + "exec " + serve.strip()],
                               stdout_path=tmp_path / "serve.out",
                               stderr_path=tmp_path / "serve.log", env=node.env, cwd=ROOT),
        lambda: http_answers(f"http://127.0.0.1:{node.admin}/readyz",
                             ok_statuses=frozenset({200})),
        name="cachesvc serve", timeout=30, error=AssertionError,
    )  # fmt: skip
    try:
        banner = (tmp_path / "serve.log").read_text()
        assert f"containerd-config --config {node.etc}/config.yaml --write" in banner, banner
        containerd.reset()
        start = wait_until_quiet(registry)
        out = node.run(prelude + pull)
        assert f"wrote {node.certs}/ccr.volces.com/hosts.toml" in out
        assert containerd.image_digest(REF) == image.digest
        quiet = wait_until_quiet(registry)
        agents = {e.user_agent for e in registry.access_log()[start:quiet]}
        assert agents, "nothing reached the registry"
        assert all(a.startswith("cachesvc/") for a in agents), agents  # only through cachesvc

        out = node.run(prelude + hit)
        assert wait_until_quiet(registry) == quiet, "the second pull reached the registry"
        hits = re.search(r'^cachesvc_requests_total\{kind="blob",registry="ccr\.volces\.com",'
                         r'result="hit"\} (\d+)\.0$', out, re.M)  # fmt: skip
        assert hits, out
        assert int(hits[1]) == len(image.layers) + 1  # config and both layers, from cachesvc's disk
        assert f"cachesvc at http://127.0.0.1:{node.admin}: ready" in out
        assert re.search(r"^  ccr\.volces\.com\s+\S+\s+healthy\s+last success", out, re.M), out
    finally:
        daemon.stop()
        containerd.reset()


# -- Other clients: podman through registries.conf ----------------------------------------------


def _require_podman() -> None:
    require("podman", "podman")
    if os.geteuid() != 0:
        pytest.skip("podman with its own storage root here needs root")


def _podman_env(node: Node, tmp_path: Path, registries_conf: str) -> dict[str, str]:
    """A private podman: its own storage (vfs), events file and registries.conf."""
    (tmp_path / "registries.conf").write_text(registries_conf)
    (tmp_path / "storage.conf").write_text(
        f'[storage]\ndriver = "vfs"\ngraphroot = "{tmp_path / "podman-root"}"\n'
        f'runroot = "{tmp_path / "podman-run"}"\n'
    )
    (tmp_path / "containers.conf").write_text(
        f'[engine]\nevents_logger = "file"\nevents_logfile_path = "{tmp_path / "events.log"}"\n'
        'cgroup_manager = "cgroupfs"\n'
    )
    return {**node.env, "CONTAINERS_REGISTRIES_CONF": str(tmp_path / "registries.conf"),
            "CONTAINERS_STORAGE_CONF": str(tmp_path / "storage.conf"),
            "CONTAINERS_CONF": str(tmp_path / "containers.conf")}  # fmt: skip


def _cachesvc(node: Node, tmp_path: Path, config: dict[str, Any]) -> CachesvcProcess:
    secret = tmp_path / "config.json"
    registries = config["registries"]
    auths = {name: {"username": ROBOT.username, "password": ROBOT.password} for name in registries}
    secret.write_text(json.dumps({"auths": auths}))
    endpoints = {n: r["endpoints"] for n, r in registries.items()}
    return CachesvcProcess(tmp_path / "cachesvc", endpoints,
                           default_registry=config.get("default_registry"),
                           extra={"credentials_file": str(secret)})  # fmt: skip


def _podman_pull(env: dict[str, str], ref: str) -> str:
    done = subprocess.run(["podman", "pull", ref], env=env, capture_output=True, text=True,
                          timeout=120, check=False)  # fmt: skip
    assert done.returncode == 0, f"podman pull {ref}\n{done.stdout}\n{done.stderr}"
    return done.stdout.strip()


def test_podman_skopeo_through_the_registries_conf_of_the_readme(
    private: Private, tmp_path: Path
) -> None:
    _require_podman()
    registry, image = private.registry, private.image
    node = Node(tmp_path, registry)
    section = _after("<!-- other-clients:")
    conf = _blocks(section, "toml")[0]
    assert 'location = "ccr.volces.com"' in conf
    # The registry's own location is made a refused loopback port: a pull can only succeed
    # through the mirror (and nothing may leave this machine).
    conf = conf.replace('location = "ccr.volces.com"', f'location = "{refused_url()[7:]}"')
    settings = {"registries": {"ccr.volces.com": {"endpoints": [registry.url]}}}
    with _cachesvc(node, tmp_path, settings) as cachesvc:
        node.replacements["127.0.0.1:5000"] = cachesvc.mirror_host
        env = _podman_env(node, tmp_path, _localize(conf, node.replacements))
        commands = _localize(_blocks(section, "sh")[0], node.replacements).splitlines()
        podman, skopeo, crane = (c.split("  #")[0].strip() for c in commands)
        assert podman == f"podman pull {REF}"
        assert _podman_pull(env, REF)  # podman prints the image id
        served = cachesvc.metric("cachesvc_requests_total", kind="blob", registry="ccr.volces.com")
        assert served >= len(image.layers) + 1
        done = subprocess.run(skopeo.split(), env=env, capture_output=True, text=True,
                              timeout=60, check=False)  # fmt: skip
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout)["Digest"] == image.digest
        if shutil.which("crane"):  # not packaged in Debian; run when present
            done = subprocess.run(crane.split(), env=env, capture_output=True, text=True,
                                  timeout=60, check=False)  # fmt: skip
            assert done.returncode == 0, done.stderr


def test_a_host_port_registry_through_default_registry_as_the_readme_says(
    private: Private, tmp_path: Path
) -> None:
    _require_podman()
    registry, image = private.registry, private.image
    node = Node(tmp_path, registry)
    section = _after("<!-- default-registry:")
    name = registry.host_port  # 127.0.0.1:PORT: a registry name with a port
    replace = {"https://registry.internal:5001": registry.url, "registry.internal:5001": name}
    settings = yaml.safe_load(_localize(_blocks(section, "yaml")[0], replace))
    assert settings["default_registry"] == name
    with _cachesvc(node, tmp_path, settings) as cachesvc:
        replace["127.0.0.1:5000"] = cachesvc.mirror_host
        conf = _localize(_blocks(section, "toml")[0], replace)
        assert f'location = "{cachesvc.mirror_host}"\n' in conf  # no path: the default registry
        env = _podman_env(node, tmp_path, conf)
        start = wait_until_quiet(registry)
        assert _podman_pull(env, f"{name}/team/app:1.0")
        served = cachesvc.metric("cachesvc_requests_total", kind="blob", registry=name)
        assert served >= len(image.layers) + 1
        agents = {e.user_agent for e in registry.access_log()[start : wait_until_quiet(registry)]}
        assert all(a.startswith("cachesvc/") for a in agents), agents  # podman never went direct
