"""Upstream access against the real peers: a private distribution registry over TLS with
htpasswd Basic auth, credentials rotated the way kubelet does it, and an upstream outage,
all pulled by the real containerd through a cachesvc process."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import trustme

from tests.peers.containerd import Containerd, write_hosts_toml
from tests.peers.images import LayerSpec, build_image, push
from tests.peers.ports import free_port
from tests.peers.registry import BasicAuth, DistributionRegistry, TLSFiles
from tests.peers_fixtures import CachesvcProcess, containerd, require_registry_and_skopeo
from tests.upstream_helpers import KubeletSecretDir, basic_entry, docker_config

__all__ = ["containerd"]  # fixture imported for pytest

pytestmark = [pytest.mark.peers, pytest.mark.timeout(110)]


# What containerd sends when it resolves a tag (the tag cache is keyed by the Accept set).
CONTAINERD_ACCEPT = ", ".join(
    (
        "application/vnd.docker.distribution.manifest.v2+json",
        "application/vnd.docker.distribution.manifest.list.v2+json",
        "application/vnd.oci.image.manifest.v1+json",
        "application/vnd.oci.image.index.v1+json",
        "*/*",
    )
)


def http_get(url: str, timeout: float = 10.0) -> tuple[int, dict[str, str], bytes]:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    # Loopback http URLs built by the test itself.
    request = urllib.request.Request(url, headers={"Accept": CONTAINERD_ACCEPT})  # noqa: S310
    try:
        with opener.open(request, timeout=timeout) as resp:
            return resp.status, dict(resp.headers), resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


def test_private_tls_registry_with_a_rotated_password_needs_no_restart(
    containerd: Containerd, tmp_path: Path
) -> None:
    require_registry_and_skopeo()
    ca = trustme.CA()
    server = ca.issue_cert("127.0.0.1")
    cert, key, ca_file, certs = (
        tmp_path / "cert.pem",
        tmp_path / "key.pem",
        tmp_path / "ca.pem",
        tmp_path / "certs.d",
    )
    server.cert_chain_pems[0].write_to_path(str(cert))
    server.private_key_pem.write_to_path(str(key))
    ca.cert_pem.write_to_path(str(ca_file))
    certs.mkdir()
    ca.cert_pem.write_to_path(str(certs / "ca.crt"))
    old, new = BasicAuth("robot", "old-Pa55word"), BasicAuth("robot", "new-Pa55word")
    layout = tmp_path / "layout"
    v1 = build_image(layout, "v1", [LayerSpec(200_000, seed=31), LayerSpec(7, seed=32)])
    v2 = build_image(layout, "v2", [LayerSpec(300_000, seed=33)])

    reg = DistributionRegistry(tmp_path / "registry", auth=old, tls=TLSFiles(cert, key))
    reg.start()
    try:
        name = reg.host_port
        assert (
            push(v1, None, reg.ref("private/app", "v1"), tls_verify=True, cert_dir=certs, creds=old)
            == v1.digest
        )
        secret = KubeletSecretDir(
            tmp_path / "secret", docker_config({name: basic_entry(old.username, old.password)})
        )
        registries = {name: {"endpoints": [reg.url], "ca_file": str(ca_file), "tag_ttl": "60s"}}
        with CachesvcProcess(
            tmp_path / "cachesvc",
            {name: [reg.url]},
            extra={"registries": registries, "credentials_file": str(secret.path)},
        ) as cachesvc:
            pid = cachesvc.pid
            hosts = tmp_path / "hosts"
            write_hosts_toml(hosts, name, cachesvc.mirror_url, f"http://127.0.0.1:{free_port()}")
            containerd.pull(f"{name}/private/app:v1", hosts)
            assert containerd.image_digest(f"{name}/private/app:v1") == v1.digest

            # The registry's password is changed (a restart is how htpasswd is reloaded).
            reg.stop()
            reg = DistributionRegistry(
                tmp_path / "registry",
                auth=new,
                tls=TLSFiles(cert, key),
                port=int(name.split(":")[1]),
            )
            reg.start()
            assert (
                push(
                    v2,
                    None,
                    reg.ref("private/app", "v2"),
                    tls_verify=True,
                    cert_dir=certs,
                    creds=new,
                )
                == v2.digest
            )

            # Before the Secret is updated: a clear 401 naming the registry and the mirror's credentials.
            status, _, body = http_get(
                f"{cachesvc.mirror_url}/v2/private/app/manifests/v2?ns={name}"
            )
            assert status == 401
            message = json.loads(body)["errors"][0]["message"]
            assert name in message
            assert "credentials" in message
            assert (
                cachesvc.metric("cachesvc_upstream_auth_failures_total", registry=name, code="401")
                >= 1
            )

            # kubelet updates the Secret volume: a new ..data directory swapped in atomically.
            secret.update(docker_config({name: basic_entry(new.username, new.password)}))
            containerd.pull(f"{name}/private/app:v2", hosts)  # the next cold pull
            assert containerd.image_digest(f"{name}/private/app:v2") == v2.digest
            assert cachesvc.pid == pid  # no restart
            log_path = cachesvc.log_path
        log = log_path.read_text()  # read after the stop: buffered lines are flushed
        containerd.reset()
    finally:
        reg.stop()
    for secret_text in (old.password, new.password):
        assert secret_text not in log


def test_outage_cached_tag_still_pulls_and_unknown_tag_fails_fast(
    containerd: Containerd, tmp_path: Path
) -> None:
    require_registry_and_skopeo()
    image = build_image(
        tmp_path / "layout", "v1", [LayerSpec(500_000, seed=41), LayerSpec(9, seed=42)]
    )
    with DistributionRegistry(tmp_path / "registry") as reg:
        name = reg.host_port
        assert push(image, None, reg.ref("app", "v1")) == image.digest
        registries = {name: {"endpoints": [reg.url], "tag_ttl": "0s"}}  # always revalidate
        with CachesvcProcess(
            tmp_path / "cachesvc", {name: [reg.url]}, extra={"registries": registries}
        ) as cachesvc:
            hosts = tmp_path / "hosts"
            write_hosts_toml(hosts, name, cachesvc.mirror_url, f"http://127.0.0.1:{free_port()}")
            ref = f"{name}/app:v1"
            containerd.pull(ref, hosts)
            containerd.reset()

            reg.stop()  # the upstream goes away

            containerd.pull(ref, hosts)  # the same tag again: from the cache, stale
            assert containerd.image_digest(ref) == image.digest
            containerd.reset()
            status, headers, _ = http_get(f"{cachesvc.mirror_url}/v2/app/manifests/v1?ns={name}")
            assert status == 200
            assert headers["Docker-Content-Digest"] == image.digest
            assert "stale" in headers["Warning"]
            assert cachesvc.metric("cachesvc_stale_served_total", registry=name) >= 2

            started = time.monotonic()
            status, _, body = http_get(
                f"{cachesvc.mirror_url}/v2/app/manifests/never-seen?ns={name}"
            )
            assert status in (502, 503, 504), body
            assert b"UNAVAILABLE" in body
            assert time.monotonic() - started < 5  # a clear error, not a hang
