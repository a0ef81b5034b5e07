"""deploy/ as rendered: what `kubectl apply -k deploy/` creates, checked for the properties the
install depends on. `make deploy-check` runs the schema validation, promtool and hadolint;
these tests check what no schema knows (the probes hit the mirror's port, one edit sets both
images, the PodMonitor's job is the one CachesvcDown watches, ...).
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml

from cachesvc.config import parse_yaml

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"


def _renderer() -> ModuleType:
    spec = importlib.util.spec_from_file_location("deploy_render", ROOT / "scripts" / "deploy_render.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("deploy_render", module)
    spec.loader.exec_module(module)
    return module


render = _renderer()


def _by_kind(docs: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    (doc,) = [d for d in docs if d["kind"] == kind]
    return doc


@pytest.fixture(scope="module")
def docs() -> list[dict[str, Any]]:
    return list(render.render(DEPLOY))


def _monitoring_overlay(tmp_path: Path) -> Path:
    base = os.path.relpath(DEPLOY, tmp_path)  # kustomize refuses absolute paths
    (tmp_path / "kustomization.yaml").write_text(
        f"resources: [{base}]\ncomponents: [{base}/components/prometheus-operator]\n"
    )
    return tmp_path


def _cluster_overlay(tmp_path: Path) -> Path:
    """deploy/ with the cluster component, as the README's overlay has it."""
    base = os.path.relpath(DEPLOY, tmp_path)
    (tmp_path / "kustomization.yaml").write_text(
        f"resources: [{base}]\ncomponents: [{base}/cluster]\n"
    )
    return tmp_path


KUSTOMIZE_OUTPUT = DEPLOY / "tests" / "kustomize"
"""``kubectl kustomize`` output for each variant, kept so the comparison runs where kubectl is
not installed (it is no Debian package); where kubectl is present the test checks the kept
output is still what kubectl renders. Regenerate with kubectl after changing deploy/."""


def _variant(which: str, tmp_path: Path) -> Path:
    if which == "monitoring":
        return _monitoring_overlay(tmp_path)
    if which == "cluster":
        return _cluster_overlay(tmp_path)
    return {"deploy": DEPLOY, "cleanup": DEPLOY / "cleanup"}[which]


def _sorted(docs: Any) -> list[dict[str, Any]]:
    return sorted((d for d in docs if d), key=lambda d: (d["kind"], d["metadata"]["name"]))


@pytest.mark.parametrize("which", ["deploy", "cleanup", "monitoring", "cluster"])
def test_the_renderer_agrees_with_kubectl_kustomize(which: str, tmp_path: Path) -> None:
    directory = _variant(which, tmp_path)
    kept = _sorted(yaml.safe_load_all((KUSTOMIZE_OUTPUT / f"{which}.yaml").read_text()))
    ours = _sorted(render.render(directory))
    assert [(d["kind"], d["metadata"]["name"]) for d in ours] == [
        (d["kind"], d["metadata"]["name"]) for d in kept
    ]
    assert ours == kept
    kubectl = shutil.which("kubectl")
    if kubectl is not None:  # the kept output is kubectl's own, still
        out = subprocess.run([kubectl, "kustomize", str(directory)], capture_output=True,
                             text=True, check=True, timeout=60).stdout  # fmt: skip
        assert _sorted(yaml.safe_load_all(out)) == kept, f"regenerate {KUSTOMIZE_OUTPUT}/{which}.yaml"


def test_a_config_change_renames_the_config_map_the_daemonset_mounts(tmp_path: Path) -> None:
    copy = tmp_path / "deploy"
    shutil.copytree(DEPLOY, copy)
    before = render.render(copy)
    (copy / "config.yaml").write_text((copy / "config.yaml").read_text() + "# changed\n")
    after = render.render(copy)

    def mounted(docs: list[dict[str, Any]]) -> str:
        volumes = _by_kind(docs, "DaemonSet")["spec"]["template"]["spec"]["volumes"]
        name: str = next(v["configMap"]["name"] for v in volumes if v["name"] == "config")
        assert name in {d["metadata"]["name"] for d in docs if d["kind"] == "ConfigMap"}
        return name

    assert mounted(before) != mounted(after)
    assert mounted(before).startswith("cachesvc-")


def test_one_images_entry_sets_both_containers(docs: list[dict[str, Any]]) -> None:
    kustomization = yaml.safe_load((DEPLOY / "kustomization.yaml").read_text())
    (image,) = kustomization["images"]
    pod = _by_kind(docs, "DaemonSet")["spec"]["template"]["spec"]
    images = {c["image"] for c in pod["containers"] + pod["initContainers"]}
    assert images == {f"{image['newName']}:{image['newTag']}"}


def test_the_shipped_config_is_valid_and_bounds_the_disk(docs: list[dict[str, Any]]) -> None:
    config_map = next(d for d in docs if d["kind"] == "ConfigMap" and "config.yaml" in d["data"])
    config = parse_yaml(config_map["data"]["config.yaml"])
    pod = _by_kind(docs, "DaemonSet")["spec"]["template"]["spec"]
    mounts = {m["mountPath"] for m in pod["containers"][0]["volumeMounts"]}
    assert config.credentials_file is not None
    assert config.admin.token_file is not None
    assert {str(config.credentials_file.parent), str(config.admin.token_file.parent)} <= mounts
    assert "/etc/cachesvc/config/config.yaml" in pod["containers"][0]["args"]
    assert config.storage.min_free is not None


def test_the_probes_reach_the_listeners_the_config_binds(docs: list[dict[str, Any]]) -> None:
    config = yaml.safe_load((DEPLOY / "config.yaml").read_text())
    mirror_host, mirror_port = config["listen"].rsplit(":", 1)
    admin_port = config["admin"]["listen"].rsplit(":", 1)[1]
    (container,) = _by_kind(docs, "DaemonSet")["spec"]["template"]["spec"]["containers"]
    for probe in ("startupProbe", "livenessProbe"):
        get = container[probe]["httpGet"]
        assert (get["host"], str(get["port"]), get["path"]) == (mirror_host, mirror_port, "/v2/")
    assert container["livenessProbe"]["timeoutSeconds"] <= 2
    ready = container["readinessProbe"]["httpGet"]
    assert (ready["host"], str(ready["port"]), ready["path"]) == ("127.0.0.1", admin_port, "/readyz")
    ports = {p["name"]: str(p["containerPort"]) for p in container["ports"]}
    assert ports == {"mirror": mirror_port, "admin": admin_port}


def test_pod_security(docs: list[dict[str, Any]]) -> None:
    namespace = _by_kind(docs, "Namespace")
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "privileged"
    pod = _by_kind(docs, "DaemonSet")["spec"]["template"]["spec"]
    assert pod["automountServiceAccountToken"] is False
    assert pod["nodeSelector"] == {"kubernetes.io/os": "linux"}
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    (init,) = pod["initContainers"]
    (main,) = pod["containers"]
    for container in (init, main):
        context = container["securityContext"]
        assert context["allowPrivilegeEscalation"] is False
        assert context["readOnlyRootFilesystem"] is True
        assert context["capabilities"]["drop"] == ["ALL"]
        assert "limits" in container["resources"]
    assert init["securityContext"]["capabilities"]["add"] == ["CHOWN"]
    assert main["securityContext"]["runAsNonRoot"] is True
    assert "add" not in main["securityContext"]["capabilities"]
    quota = _by_kind(docs, "ResourceQuota")
    (scope,) = quota["spec"]["scopeSelector"]["matchExpressions"]
    assert scope["scopeName"] == "PriorityClass"
    assert scope["values"] == [pod["priorityClassName"]]
    assert quota["metadata"]["namespace"] == namespace["metadata"]["name"]


def test_the_init_container_reads_containerd_config_from_its_mount(docs: list[dict[str, Any]]) -> None:
    pod = _by_kind(docs, "DaemonSet")["spec"]["template"]["spec"]
    (init,) = pod["initContainers"]
    words = " ".join(init["command"]).split()
    config_toml = words[words.index("--containerd-config") + 1]
    host_root = words[words.index("--host-root") + 1]
    mounts = {m["mountPath"]: m for m in init["volumeMounts"]}
    assert mounts[config_toml].get("readOnly") is True
    volumes = {v["name"]: v for v in pod["volumes"]}
    source = volumes[mounts[config_toml]["name"]]["hostPath"]
    assert host_root + source["path"] == config_toml
    certs = next(m for m in init["volumeMounts"] if m["name"] == "certs-d")
    assert host_root + volumes["certs-d"]["hostPath"]["path"] == certs["mountPath"]
    assert not certs.get("readOnly")


def test_the_daemon_checks_the_wiring_the_init_container_wrote(docs: list[dict[str, Any]]) -> None:
    config = parse_yaml((DEPLOY / "config.yaml").read_text())
    pod = _by_kind(docs, "DaemonSet")["spec"]["template"]["spec"]
    (init,) = pod["initContainers"]
    (main,) = pod["containers"]
    words = " ".join(init["command"]).split()
    check = config.containerd
    assert str(check.config) == words[words.index("--containerd-config") + 1]
    assert str(check.host_root) == words[words.index("--host-root") + 1]
    mounts = {m["mountPath"]: m for m in main["volumeMounts"]}
    init_mounts = {m["mountPath"]: m["name"] for m in init["volumeMounts"]}
    for path in (str(check.config), str(check.host_root) + "/etc/containerd/certs.d"):
        assert mounts[path]["readOnly"] is True
        assert mounts[path]["name"] == init_mounts[path]


def test_cachesvc_down_watches_the_podmonitor_job(tmp_path: Path) -> None:
    docs = render.render(_monitoring_overlay(tmp_path))
    monitor = _by_kind(docs, "PodMonitor")
    pod_labels = _by_kind(docs, "DaemonSet")["spec"]["template"]["metadata"]["labels"]
    job = pod_labels[monitor["spec"]["jobLabel"]]
    assert monitor["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    (endpoint,) = monitor["spec"]["podMetricsEndpoints"]
    assert endpoint["port"] == "admin"
    rules = {r["alert"]: r["expr"] for g in _by_kind(docs, "PrometheusRule")["spec"]["groups"]
             for r in g["rules"]}  # fmt: skip
    assert rules["CachesvcDown"] == f'up{{job="{job}"}} == 0'
    assert rules["CachesvcAbsent"] == f'absent(up{{job="{job}"}})'


def test_the_prometheus_rule_is_generated_from_the_plain_rules_file() -> None:
    assert render.PROMETHEUS_RULE.read_text() == render.prometheus_rule_text(), (
        "run python scripts/deploy_render.py --sync-rules"
    )


def test_every_alert_has_a_promtool_test() -> None:
    rules = yaml.safe_load((DEPLOY / "prometheus-rules.yaml").read_text())
    alerts = {r["alert"] for g in rules["groups"] for r in g["rules"]}
    suite = yaml.safe_load((DEPLOY / "tests" / "rules-test.yaml").read_text())
    tested: dict[str, set[bool]] = {}
    for test in suite["tests"]:
        for case in test["alert_rule_test"]:
            tested.setdefault(case["alertname"], set()).add(bool(case["exp_alerts"]))
    assert {a: {True, False} for a in alerts} == {a: tested.get(a) for a in alerts}


def test_the_renderer_refuses_what_it_does_not_do(tmp_path: Path) -> None:
    (tmp_path / "kustomization.yaml").write_text("resources: []\nreplacements: [{path: p.yaml}]\n")
    with pytest.raises(render.RenderError, match=r"unsupported keys \['replacements'\]"):
        render.render(tmp_path)


@pytest.mark.parametrize("overlay", ["deploy", "cluster"])
def test_every_cachesvc_command_line_parses_and_checks_the_wiring(
    overlay: str, tmp_path: Path
) -> None:
    """Each container's `cachesvc ...` words (after `exec` in a shell line) are what the CLI
    accepts, and the init container of either layout checks containerd's config.toml (a
    bare `--write DIR` would write hosts files nobody may read)."""
    from cachesvc.cli import build_parser

    docs = render.render(DEPLOY if overlay == "deploy" else _cluster_overlay(tmp_path))
    pod = _by_kind(docs, "DaemonSet")["spec"]["template"]["spec"]
    seen = {}
    for container in pod["initContainers"] + pod["containers"]:
        words = " ".join(container.get("command", []) + container.get("args", [])).split()
        start = words.index("cachesvc") + 1 if "cachesvc" in words else 0
        seen[container["name"]] = build_parser().parse_args(words[start:])
    assert seen["cachesvc"].command == "serve"
    init = seen["containerd-hosts"]
    assert init.command == "containerd-config"
    assert init.containerd_config == "/host/etc/containerd/config.toml"
    assert init.host_root == "/host"
    assert init.write is not None
