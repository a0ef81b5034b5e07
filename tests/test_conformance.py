"""The OCI distribution-spec conformance suite (pull specs, v1.1.1) against cachesvc in front
of the real distribution registry, routed by ``default_registry`` and by a registry path
prefix. The suite is compiled and lives outside the repository: ``../shared/conformance``
beside the clone (CI gets a read-only copy there), or ``$OCI_CONFORMANCE_DIR``."""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.peers.registry import DistributionRegistry
from tests.peers_fixtures import REPO_ROOT, CachesvcProcess, registry

__all__ = ["registry"]  # fixture imported for pytest

pytestmark = [pytest.mark.peers, pytest.mark.timeout(120)]

SUITE = Path(os.environ.get("OCI_CONFORMANCE_DIR", REPO_ROOT.parent / "shared" / "conformance"))
PULL_SPECS = 14


def _suite() -> Path:
    run = SUITE / "run.sh"
    if not run.exists():
        message = f"the conformance suite is not at {SUITE} (set OCI_CONFORMANCE_DIR)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message, pytrace=False)
        pytest.skip(message)
    return run


@pytest.fixture(scope="module")
def cachesvc(
    registry: DistributionRegistry, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[CachesvcProcess]:
    """cachesvc mirroring the registry under its own name, which is also the default."""
    work = tmp_path_factory.mktemp("cachesvc")
    with CachesvcProcess(work, {registry.host_port: [registry.url]}) as svc:
        yield svc


def run_suite(mirror: str, upstream: str, namespace: str, reports: Path) -> tuple[int, str]:
    """``run.sh``; returns (passed specs, the suite's summary and failures for the message)."""
    done = subprocess.run(
        ["bash", str(_suite()), mirror, upstream, namespace, str(reports)],
        capture_output=True, text=True, timeout=100, check=False,
    )  # fmt: skip
    out = done.stdout + done.stderr
    summary = re.search(r"(\d+) Passed \| (\d+) Failed", out)
    assert summary is not None, f"no summary from the suite:\n{out[-3000:]}"
    failures = "\n".join(line for line in out.splitlines() if "[FAIL]" in line or "<int>" in line)
    return int(summary[1]), f"{summary[0]}\n{failures}"


@pytest.mark.parametrize("routing", ["default_registry", "path_prefix"])
def test_all_pull_specs_pass_through_cachesvc(
    routing: str, registry: DistributionRegistry, cachesvc: CachesvcProcess, tmp_path: Path
) -> None:
    namespace = "conformance/pull"
    if routing == "path_prefix":
        namespace = f"{registry.host_port}/{namespace}"
    passed, report = run_suite(cachesvc.mirror_url, registry.url, namespace, tmp_path)
    assert passed == PULL_SPECS, report
