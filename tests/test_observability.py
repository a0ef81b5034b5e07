"""Metrics values after a known sequence, the access-log schema, prewarm job events,
no secrets in logs, and the shipped dashboard and alert rules against cachesvc.metrics."""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
from functools import partial
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from prometheus_client import CollectorRegistry, generate_latest

from cachesvc.logs import JsonFormatter
from cachesvc.metrics import CHILDREN_LIMIT, Metrics
from cachesvc.oci import Digest
from tests.fakes.registry import FakeRegistry
from tests.operator import TOKEN, add_index, admin_with_token, auth, submit, wait_job
from tests.peers.require import require
from tests.polling import eventually
from tests.upstream_helpers import metrics, parse_metrics, sample

ROOT = Path(__file__).resolve().parent.parent
ACCESS_FIELDS = {
    "time", "level", "logger", "msg", "client", "method", "path", "registry", "repository",
    "reference", "digest", "status", "bytes", "duration_ms", "cache", "upstream", "error",
    "policy",
}  # fmt: skip


async def test_operator_metrics_after_a_known_sequence(
    fake: FakeRegistry, storage: Path, http: aiohttp.ClientSession
) -> None:
    fake.require_token = True
    _, images = add_index(fake, "team/app", "1", {"linux/amd64": [100_000, 20_000]})
    amd = images["linux/amd64"]
    async with admin_with_token(storage, fake) as daemon:
        job = await wait_job(http, daemon, await submit(
            http, daemon, ["fake.test/team/app:1"], platforms=["linux/amd64"]))  # fmt: skip
        assert job["state"] == "done"
        for _ in range(2):  # two cache hits of the big layer
            async with http.get(
                f"{daemon.mirror_url}/v2/team/app/blobs/{amd.blobs[1]}?ns=fake.test"
            ) as resp:
                await resp.read()
        async with http.get(f"{daemon.admin_url}/admin/v1/jobs", headers=auth("wrong")) as resp:
            assert resp.status == 401
        async with http.delete(
            f"{daemon.admin_url}/admin/v1/images/fake.test/team/app:1", headers=auth()
        ) as resp:
            purged = await resp.json()
        value = partial(sample, await metrics(http, daemon))

    total = sum(amd.sizes)
    assert value("cachesvc_prewarm_jobs_total", result="done") == 1
    assert value("cachesvc_prewarm_images_total", result="done") == 1
    assert value("cachesvc_prewarm_bytes_total", source="fetched") == total
    assert value("cachesvc_prewarm_jobs_running") == 0
    assert value("cachesvc_requests_total", kind="blob", result="hit", registry="fake.test") == 2
    assert value("cachesvc_served_bytes_total", source="cache") == 200_000
    assert value("cachesvc_upstream_bytes_total", registry="fake.test") == total
    assert value("cachesvc_fill_duration_seconds_count", result="ok") == 3
    assert value("cachesvc_fill_waiters_per_fill_count") == 3
    assert value("cachesvc_fills_in_flight") == 0
    assert value("cachesvc_fill_waiters") == 0
    assert value("cachesvc_token_fetches_total", registry="fake.test", result="ok") >= 1
    assert value("cachesvc_upstream_last_success_timestamp_seconds",
                 registry="fake.test", endpoint=fake.url) > 0  # fmt: skip
    assert value("cachesvc_admin_requests_total", result="ok") >= 3  # POST, GETs, DELETE
    assert value("cachesvc_admin_requests_total", result="unauthorized") == 1
    # The purge removed all 5 blobs (index, manifest, config, 2 layers); the store is empty.
    assert purged["blobs_removed"] == 5
    assert value("cachesvc_evictions_total", reason="purge") == 5
    assert value("cachesvc_cache_size_bytes") == 0
    assert value("cachesvc_cache_entries") == 0
    assert value("cachesvc_cache_capacity_bytes") == 0
    assert value("cachesvc_storage_free_bytes") > 0
    assert value("cachesvc_pinned_images") == 0


async def test_access_log_schema_and_prewarm_events(
    fake: FakeRegistry,
    storage: Path,
    http: aiohttp.ClientSession,
    caplog: pytest.LogCaptureFixture,
) -> None:
    manifest, blobs = fake.add_image("team/app", "1", [os.urandom(5000)])
    async with admin_with_token(storage, fake) as daemon:
        base = f"{daemon.mirror_url}/v2/team/app"
        with caplog.at_level(logging.INFO):
            for url in (f"{base}/manifests/1?ns=fake.test", f"{base}/blobs/{blobs[1]}?ns=fake.test",
                        f"{base}/blobs/{blobs[1]}?ns=fake.test"):  # fmt: skip
                async with http.get(url) as resp:
                    assert resp.status == 200
                    await resp.read()
                # The commit lands just after the last verified bytes went out.
                if "/blobs/" in url:
                    assert await eventually(
                        lambda: daemon.parts.store.size(Digest.parse(blobs[1])) is not None
                    )
            async with http.head(f"{base}/blobs/{blobs[0]}?ns=fake.test") as resp:
                assert resp.status == 200
            await wait_job(http, daemon, await submit(http, daemon, ["fake.test/team/app:1"]))
    formatter = JsonFormatter()
    access = [json.loads(formatter.format(r)) for r in caplog.records
              if r.name == "cachesvc.access"]  # fmt: skip
    assert len(access) == 4
    for line in access:
        assert set(line) == ACCESS_FIELDS, line
        assert isinstance(line["status"], int)
        assert isinstance(line["bytes"], int)
        assert isinstance(line["duration_ms"], float | int)
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", line["time"])
    tag, miss, hit, head = access
    assert (tag["reference"], tag["digest"], tag["cache"], tag["upstream"]) == (
        "1", manifest, "miss", fake.url)
    assert (miss["digest"], miss["cache"], miss["upstream"], miss["bytes"]) == (
        blobs[1], "miss", fake.url, 5000)
    assert (hit["cache"], hit["upstream"]) == ("hit", None)
    assert (head["method"], head["cache"], head["upstream"]) == ("HEAD", "miss", fake.url)
    events = [json.loads(formatter.format(r)) for r in caplog.records
              if r.name == "cachesvc.prewarm"]  # fmt: skip
    assert [e["event"] for e in events] == ["submitted", "image resolved", "image done", "finished"]
    assert {e["job"] for e in events} == {events[0]["job"]}
    assert events[-1]["state"] == "done"


async def test_no_credential_or_token_is_ever_logged(
    fake: FakeRegistry,
    storage: Path,
    http: aiohttp.ClientSession,
    caplog: pytest.LogCaptureFixture,
) -> None:
    fake.require_token = True
    fake.add_image("team/app", "1", [os.urandom(1000)])
    client_secret = "client-secret-should-never-appear"
    async with admin_with_token(storage, fake) as daemon:
        with caplog.at_level(logging.DEBUG):
            await wait_job(http, daemon, await submit(http, daemon, ["fake.test/team/app:1"]))
            async with http.get(
                f"{daemon.mirror_url}/v2/team/app/manifests/1?ns=fake.test",
                headers={"Authorization": f"Bearer {client_secret}"},
            ) as resp:
                assert resp.status == 200
            for token in ("wrong-" + TOKEN, TOKEN[:-1]):
                async with http.get(f"{daemon.admin_url}/admin/v1/jobs",
                                    headers=auth(token)) as resp:  # fmt: skip
                    assert resp.status == 401
            fake.faults.status = 503  # error paths log too
            async with http.get(
                f"{daemon.mirror_url}/v2/team/other/manifests/2?ns=fake.test"
            ) as resp:
                assert resp.status >= 500
    assert fake.tokens_issued >= 1
    formatter = JsonFormatter()
    text = "\n".join(formatter.format(r) for r in caplog.records)
    assert "cachesvc.access" in text  # the capture saw the logs
    for secret in (TOKEN, TOKEN[:-1], client_secret, "tok-1", "Bearer ", "Authorization"):
        assert secret not in text, secret


def _metric_names() -> set[str]:
    suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_count", "_sum"),
                "gauge": ("",)}  # fmt: skip
    return {
        family.name + suffix
        for family in Metrics(CollectorRegistry()).registry.collect()
        for suffix in suffixes[family.type]
    }


def _referenced(text: str) -> set[str]:
    return set(re.findall(r"\b(?:cachesvc|process)_[a-z0-9_]+", text))


def _dashboard_panels() -> list[dict[str, Any]]:
    dashboard = json.loads((ROOT / "deploy" / "grafana-dashboard.json").read_text())
    return list(dashboard["panels"])


# What a panel's unit may be for each kind of value an expression yields (Grafana unit ids).
UNITS = {
    "ratio": {"percentunit"},
    "bytes": {"bytes"},
    "bytes/s": {"Bps"},
    "seconds": {"s"},
    "per second": {"reqps", "ops"},
    "count": {"short", "none"},
}


def _kind_of(expr: str) -> str:
    """The kind of value ``expr`` yields, from metric naming conventions: a ratio of two
    values, a quantile of a histogram, a rate of a counter, or a gauge (bytes, count)."""
    names = _referenced(expr)
    quantile = re.search(r"histogram_quantile\(.*?\b([a-z0-9_]+)_bucket\b", expr)
    if quantile:
        return "seconds" if quantile.group(1).endswith("_seconds") else "count"
    if re.search(r"\)\s*/|\}\s*/", expr) or any(n.endswith("_seconds_total") for n in names):
        return "ratio"  # a quotient, or seconds per second (CPU)
    per_second = "rate(" in expr
    if any(n.endswith("_bytes_total") for n in names):
        return "bytes/s" if per_second else "bytes"
    if per_second:
        return "per second"
    first = re.search(r"\b(?:cachesvc|process)_[a-z0-9_]+", expr)
    assert first is not None, expr
    return "bytes" if first.group(0).endswith("_bytes") and "increase(" not in expr else "count"


def test_every_dashboard_panel_has_one_unit() -> None:
    """One axis per panel: every expression yields the kind of value the panel's unit says
    (no pinned bytes on a bytes/s axis, no job counts beside prewarm throughput)."""
    mixed = {}
    for panel in _dashboard_panels():
        unit = panel["fieldConfig"]["defaults"]["unit"]
        kinds = {t["expr"]: _kind_of(t["expr"]) for t in panel["targets"]}
        wrong = {e: k for e, k in kinds.items() if unit not in UNITS[k]}
        if wrong or panel["fieldConfig"].get("overrides"):
            mixed[panel["title"]] = (unit, wrong)
    assert mixed == {}
    assert _kind_of("sum(cachesvc_pinned_bytes)") == "bytes"
    assert _kind_of("sum(rate(cachesvc_prewarm_bytes_total[5m]))") == "bytes/s"
    assert _kind_of("sum(cachesvc_prewarm_jobs_running)") == "count"


def test_the_dashboard_shows_the_operators_questions() -> None:
    exprs = " ".join(t["expr"] for p in _dashboard_panels() for t in p["targets"])
    for name in ("process_resident_memory_bytes", "process_open_fds",
                 "cachesvc_upstream_recent_errors", "cachesvc_containerd_wired",
                 "cachesvc_storage_ready", "cachesvc_cluster_members",
                 "cachesvc_peer_requests_total", "cachesvc_peer_received_bytes_total",
                 "cachesvc_policy_decisions_total", "cachesvc_upstream_auth_failures_total",
                 "cachesvc_pinned_bytes"):  # fmt: skip
        assert name in exprs, name


def test_every_dashboard_expression_parses(tmp_path: Path) -> None:
    """promtool parses PromQL offline: each panel expression as a recording rule."""
    promtool = require("promtool", "prometheus")
    rules = [{"record": f"panel_{p['id']}_{t['refId']}", "expr": t["expr"]}
             for p in _dashboard_panels() for t in p["targets"]]  # fmt: skip
    path = tmp_path / "panels.yaml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    check = subprocess.run([promtool, "check", "rules", str(path)], capture_output=True,
                           text=True, check=False)  # fmt: skip
    assert check.returncode == 0, check.stdout + check.stderr


def test_dashboard_and_alert_rules_reference_only_real_metrics() -> None:
    known = _metric_names()
    dashboard_text = (ROOT / "deploy" / "grafana-dashboard.json").read_text()
    dashboard = json.loads(dashboard_text)
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    rules = yaml.safe_load((ROOT / "deploy" / "prometheus-rules.yaml").read_text())
    alerts = {r["alert"]: r["expr"] for g in rules["groups"] for r in g["rules"]}
    assert {"CachesvcHitRatioCollapsed", "CachesvcUpstreamErrors", "CachesvcDiskNearlyFull",
            "CachesvcDigestMismatch"} <= set(alerts)  # fmt: skip
    used = _referenced(" ".join(exprs)) | _referenced(" ".join(alerts.values()))
    assert used, "nothing referenced"
    unknown = sorted(used - known)
    assert unknown == [], f"not in cachesvc/metrics/: {unknown}"
    titles = " ".join(p["title"].lower() for p in dashboard["panels"])
    for topic in ("hit ratio", "bytes saved", "upstream errors", "fill level", "fill latency"):
        assert topic in titles


def test_every_metric_is_documented() -> None:
    docs = (ROOT / "README.md").read_text()
    families = {f.name for f in Metrics(CollectorRegistry()).registry.collect()}
    counters = {f.name for f in Metrics(CollectorRegistry()).registry.collect()
                if f.type == "counter"}  # fmt: skip
    missing = sorted(
        name for name in families
        if (name + "_total" if name in counters else name) not in docs
    )  # fmt: skip
    assert missing == []


def test_bound_children_count_into_the_labelled_series_and_stay_bounded() -> None:
    metrics = Metrics(CollectorRegistry())
    for _ in range(3):
        metrics.http_responses_by("GET", "200").inc()
    metrics.http_responses.labels("GET", "200").inc()
    assert metrics.http_responses_by("GET", "200") is metrics.http_responses_by("GET", "200")
    for n in range(CHILDREN_LIMIT + 5):
        metrics.served_bytes_by(f"source{n}").inc(n)
    assert metrics.served_bytes_by.cache_info().currsize <= CHILDREN_LIMIT
    values = parse_metrics(generate_latest(metrics.registry).decode())
    assert values[("cachesvc_http_responses_total", (("code", "200"), ("method", "GET")))] == 4
    last = CHILDREN_LIMIT + 4
    assert values[("cachesvc_served_bytes_total", (("source", f"source{last}"),))] == last
