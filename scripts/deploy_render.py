"""Render deploy/'s kustomizations without kubectl, and keep the PrometheusRule in sync.

Why our own renderer: CI machines have Debian's packages, and Debian's kubectl (1.20)
embeds a kustomize too old for components. This renders the subset deploy/ uses, the way
kustomize does (configMapGenerator names with kustomize's content hash, references to them
rewritten, `images:`, `namespace:`), and refuses any other kustomization key rather than
ignore it. tests/test_deploy.py compares its output with `kubectl kustomize` where kubectl
is installed.

    python scripts/deploy_render.py DIR [--out FILE]     rendered YAML (stdout or FILE)
    python scripts/deploy_render.py --sync-rules         regenerate the PrometheusRule
    python scripts/deploy_render.py --check-rules        exit 1 if it is out of date
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
RULES = ROOT / "deploy" / "prometheus-rules.yaml"
PROMETHEUS_RULE = ROOT / "deploy" / "components" / "prometheus-operator" / "prometheusrule.yaml"

_KEYS = {"apiVersion", "kind", "namespace", "resources", "components", "configMapGenerator",
         "images", "patches"}  # fmt: skip
# Strategic merge: the lists of a pod spec merged by key (Kubernetes' patchMergeKey); any
# other list is replaced, maps are merged (what deploy/cluster's DaemonSet patch needs).
_MERGE_KEYS = {"containers": "name", "initContainers": "name", "volumes": "name", "env": "name",
               "volumeMounts": "mountPath", "ports": "containerPort"}  # fmt: skip
_CLUSTER_SCOPED = {"Namespace", "PriorityClass", "ClusterRole", "ClusterRoleBinding",
                   "CustomResourceDefinition"}  # fmt: skip
Doc = dict[str, Any]


class RenderError(Exception):
    """The kustomization uses something this renderer does not do: say so, never guess."""


def _kustomization(directory: Path) -> Doc:
    document = yaml.safe_load((directory / "kustomization.yaml").read_text()) or {}
    unknown = sorted(set(document) - _KEYS)
    if unknown:
        raise RenderError(f"{directory}/kustomization.yaml: unsupported keys {unknown}")
    return dict(document)


def kustomize_hash(config_map: Doc) -> str:
    """kustomize's name suffix: sha256 of the JSON of kind, name and data, first 10 hex
    digits with 0, 1, 3, a, e swapped for letters (so the suffix is never all digits).

    kustomize 5 hashes with an empty name (its lookup of ``metadata/name`` finds nothing;
    `kubectl create configmap --append-hash` uses the real name): we match kustomize.
    """
    encoded: Doc = {"data": config_map.get("data", {}), "kind": "ConfigMap", "name": ""}
    text = json.dumps(encoded, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    # Go's encoding/json escapes these; the hash is over Go's bytes.
    for char, escape in (("&", "\\u0026"), ("<", "\\u003c"), (">", "\\u003e"),
                         ("\u2028", "\\u2028"), ("\u2029", "\\u2029")):  # fmt: skip
        text = text.replace(char, escape)
    digest = hashlib.sha256(text.encode()).hexdigest()[:10]
    return digest.translate(str.maketrans("013ae", "ghkmt"))


def _generate(directory: Path, generator: Doc) -> tuple[Doc, str]:
    data = {}
    for entry in generator.get("files", []):
        key, _, path = entry.rpartition("=") if "=" in entry else ("", "", entry)
        data[key or Path(path).name] = (directory / path).read_text()
    options = generator.get("options", {})
    name = generator["name"]
    config_map: Doc = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name}}
    if options.get("labels"):
        config_map["metadata"]["labels"] = dict(options["labels"])
    config_map["data"] = data
    if not options.get("disableNameSuffixHash"):
        config_map["metadata"]["name"] = f"{name}-{kustomize_hash(config_map)}"
    return config_map, name


def _pod_specs(doc: Doc) -> Iterable[Doc]:
    template = doc.get("spec", {}).get("template", {})
    if "spec" in template:
        yield template["spec"]


def _rename_config_maps(docs: list[Doc], names: dict[str, str]) -> None:
    for doc in docs:
        for pod in _pod_specs(doc):
            for volume in pod.get("volumes", []):
                ref = volume.get("configMap")
                if ref and ref.get("name") in names:
                    ref["name"] = names[ref["name"]]
            for container in pod.get("containers", []) + pod.get("initContainers", []):
                for source in container.get("envFrom", []):
                    ref = source.get("configMapRef")
                    if ref and ref.get("name") in names:
                        ref["name"] = names[ref["name"]]


def _set_images(docs: list[Doc], images: list[Doc]) -> None:
    for doc in docs:
        for pod in _pod_specs(doc):
            for container in pod.get("containers", []) + pod.get("initContainers", []):
                name = container["image"].split("@")[0].rsplit(":", 1)[0]
                for image in images:
                    if image["name"] == name:
                        tag = f":{image['newTag']}" if "newTag" in image else ""
                        container["image"] = image.get("newName", name) + tag


def _merge(base: Any, patch: Any, field: str = "") -> Any:
    """``patch`` over ``base`` as a strategic-merge patch does (the subset above)."""
    if isinstance(base, dict) and isinstance(patch, dict):
        merged = dict(base)
        for key, value in patch.items():
            merged[key] = _merge(base[key], value, key) if key in base else value
        return merged
    key = _MERGE_KEYS.get(field)
    if key is not None and isinstance(base, list) and isinstance(patch, list):
        merged_list, added = list(base), []
        for item in patch:
            index = next((i for i, b in enumerate(merged_list) if b.get(key) == item.get(key)),
                         None)  # fmt: skip
            if index is None:
                added.append(item)
            else:
                merged_list[index] = _merge(merged_list[index], item)
        return added + merged_list  # kustomize puts the new items first
    return patch


def _patch(directory: Path, docs: list[Doc], entry: Doc) -> None:
    """One ``patches:`` entry: a strategic-merge patch file, applied to its target."""
    unknown = sorted(set(entry) - {"path", "target"})
    if unknown:
        raise RenderError(f"{directory}: patches entry with unsupported keys {unknown}")
    patch = yaml.safe_load((directory / entry["path"]).read_text())
    target = entry.get("target") or {"kind": patch["kind"], "name": patch["metadata"]["name"]}
    hits = [i for i, d in enumerate(docs) if d["kind"] == target.get("kind", d["kind"])
            and d["metadata"]["name"] == target.get("name", d["metadata"]["name"])]  # fmt: skip
    if not hits:
        raise RenderError(f"{directory / entry['path']}: no resource matches {target}")
    for i in hits:
        patched = dict(patch)
        patched["metadata"] = {**patch.get("metadata", {}), "name": docs[i]["metadata"]["name"]}
        if "namespace" in docs[i]["metadata"]:
            patched["metadata"]["namespace"] = docs[i]["metadata"]["namespace"]
        docs[i] = _merge(docs[i], patched)


def _apply(directory: Path, kustomization: Doc, docs: list[Doc]) -> list[Doc]:
    """One kustomization's own resources, generators and transformers over ``docs``."""
    for resource in kustomization.get("resources", []):
        path = directory / resource
        docs += render(path) if path.is_dir() else list(_load(path))
    for component in kustomization.get("components", []):
        inner = _kustomization(directory / component)
        if inner.get("kind") != "Component":
            raise RenderError(f"{directory / component} is not a kind: Component")
        docs = _apply(directory / component, inner, docs)
    names = {}
    for generator in kustomization.get("configMapGenerator", []):
        config_map, name = _generate(directory, generator)
        docs.append(config_map)
        names[name] = config_map["metadata"]["name"]
    for entry in kustomization.get("patches", []):
        _patch(directory, docs, entry)
    _rename_config_maps(docs, names)
    _set_images(docs, kustomization.get("images", []))
    if "namespace" in kustomization:
        for doc in docs:
            if doc["kind"] not in _CLUSTER_SCOPED:
                doc["metadata"]["namespace"] = kustomization["namespace"]
    return docs


def _load(path: Path) -> Iterable[Doc]:
    return (doc for doc in yaml.safe_load_all(path.read_text()) if doc)


def render(directory: Path) -> list[Doc]:
    """Every object ``kubectl kustomize DIR`` would print (order aside)."""
    kustomization = _kustomization(directory)
    if kustomization.get("kind", "Kustomization") != "Kustomization":
        raise RenderError(f"{directory} is a {kustomization['kind']}, not a Kustomization")
    return _apply(directory, kustomization, [])


def prometheus_rule_text() -> str:
    """The PrometheusRule object for the Operator, wrapping deploy/prometheus-rules.yaml."""
    groups = yaml.safe_load(RULES.read_text())["groups"]
    rule = {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PrometheusRule",
        "metadata": {"name": "cachesvc", "labels": {"app.kubernetes.io/name": "cachesvc"}},
        "spec": {"groups": groups},
    }
    header = (
        "# GENERATED from deploy/prometheus-rules.yaml by `python scripts/deploy_render.py"
        " --sync-rules`:\n# edit that file, not this one.\n"
    )
    return header + yaml.safe_dump(rule, sort_keys=False, width=100)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("directory", nargs="?", type=Path)
    parser.add_argument("--out", type=Path)
    parser.add_argument("--sync-rules", action="store_true")
    parser.add_argument("--check-rules", action="store_true")
    args = parser.parse_args(argv)
    if args.sync_rules:
        PROMETHEUS_RULE.write_text(prometheus_rule_text())
    if args.check_rules and PROMETHEUS_RULE.read_text() != prometheus_rule_text():
        print(f"{PROMETHEUS_RULE} is out of date: run python scripts/deploy_render.py "
              "--sync-rules", file=sys.stderr)  # fmt: skip
        return 1
    if args.directory is not None:
        try:
            text = yaml.safe_dump_all(render(args.directory), sort_keys=False)
        except (RenderError, OSError, KeyError) as exc:
            print(f"deploy_render: {exc}", file=sys.stderr)
            return 1
        if args.out:
            args.out.write_text(text)
        else:
            sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
