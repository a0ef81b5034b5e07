"""Cluster mode rollouts in a private network namespace, upstream shaped by tc (root).

``python -m benchmarks.cluster [--rates 1gbit,2.5gbit] [--nodes 1,3,8] [--size 256MiB]``

For each link rate a fresh namespace (``benchmarks.netns``): the upstream (the distribution
registry) on 127.0.0.1:6000 with its replies shaped by htb to the rate, and, per scenario,
N caches on 127.0.0.2.. pulling one image of one layer at once:

- ``cluster``: N cachesvc daemons in cluster mode (static member list, fanout 8);
- ``independent``: N cachesvc daemons without ``cluster:`` (every node an island);
- ``distribution``: N distribution registries in proxy mode;
- ``cluster, owner killed``: the layer's owner SIGKILLed after a third of the layer arrived.

Then one more namespace for the fan-out model (``benchmarks.fanout_model``): the same N = 8
cluster run with every peer listener's egress shaped to a NIC rate too (``--nic``), once
with fanout 8 and once with fanout 2, next to what the model predicts.

Upstream bytes are the shaped class's byte counter (payload plus TCP/IP headers of the
upstream's replies, so about 1.03x is one copy). Wall time is from the first request until
the last node has every byte. Results: ``benchmarks/results/cluster.md`` (and printed). The
namespace is deleted in ``finally`` (with anything still running in it).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from benchmarks.cluster_lab import (
    PEER_PORT,
    UPSTREAM,
    Run,
    as_json,
    host,
    run_scenario,
    upstream_with_image,
)
from benchmarks.fanout_model import parse_rate, parse_size, simulate
from benchmarks.netns import Namespace
from benchmarks.systems import REPO_ROOT

RESULTS = REPO_ROOT / "benchmarks" / "results" / "cluster.md"
UPSTREAM_PORT = int(UPSTREAM.rsplit(":", 1)[1])


def _plan(args: argparse.Namespace, rate: str) -> list[Run]:
    runs = []
    for n in (int(x) for x in args.nodes.split(",")):
        for system in args.systems.split(","):
            runs.append(Run(system, n, rate))
        if n > 1 and "cluster" in args.systems:
            runs.append(Run("cluster", n, rate, killed=True))
    return runs


def _model_plan(args: argparse.Namespace) -> list[Run]:
    n = max(int(x) for x in args.nodes.split(","))
    return [Run("cluster", n, args.model_rate, nic=args.nic, fanout=f) for f in (8, 2)]


def inner(args: argparse.Namespace) -> None:
    """In the namespace: the upstream, then every planned run; JSON lines to ``--out``."""
    ns = Namespace(args.inside)
    runs = [Run(**json.loads(line)) for line in Path(args.plan).read_text().splitlines()]
    with tempfile.TemporaryDirectory(prefix="cachesvc-cluster-bench-") as tmp:
        root = Path(tmp)
        upstream, image = __import__("asyncio").run(
            upstream_with_image(ns, root, parse_size(args.size))
        )
        try:
            done = []
            for run in runs:
                print(f"  {run.system} N={run.nodes} killed={run.killed} nic={run.nic} "
                      f"fanout={run.fanout} ...", flush=True)  # fmt: skip
                done.append(run_scenario(run, ns, image, root))
                Path(args.out).write_text(as_json(done))
        finally:
            upstream.stop()


def _in_namespace(rate: str, runs: Sequence[Run], args: argparse.Namespace, nic: str | None,
                  out: Path) -> list[Run]:  # fmt: skip
    plan = out.with_suffix(".plan")
    plan.write_text(as_json(runs))
    with Namespace.create() as ns:  # deleted (and everything in it killed) on the way out
        ns.shape_port(UPSTREAM_PORT, rate)
        if nic is not None:
            ns.shape_sources([host(k) for k in range(runs[0].nodes)], PEER_PORT, nic)
        argv = [sys.executable, "-m", "benchmarks.cluster", "--inside", ns.name,
                "--plan", str(plan), "--out", str(out), "--size", args.size]  # fmt: skip
        subprocess.run(ns.argv(argv), check=True, cwd=REPO_ROOT)
    return [Run(**json.loads(line)) for line in out.read_text().splitlines()]


def outer(args: argparse.Namespace) -> int:
    """One namespace per rate (and one for the model check); the report."""
    if os.geteuid() != 0:
        print("benchmarks.cluster needs root (ip netns, tc)", file=sys.stderr)
        return 2
    started = time.time()
    runs: list[Run] = []
    with tempfile.TemporaryDirectory(prefix="cachesvc-cluster-results-") as tmp:
        for i, rate in enumerate(args.rates.split(",")):
            print(f"link {rate}:", flush=True)
            runs += _in_namespace(rate, _plan(args, rate), args, None, Path(tmp) / f"{i}.json")
        if args.nic:
            print(f"model check: link {args.model_rate}, NICs {args.nic}:", flush=True)
            runs += _in_namespace(args.model_rate, _model_plan(args), args, args.nic,
                                  Path(tmp) / "model.json")  # fmt: skip
    from benchmarks.cluster_report import report

    text = report(runs, parse_size(args.size), time.time() - started, parse_rate)
    Path(args.results).write_text(text)
    print(text)
    return 0 if all(not r.errors for r in runs) else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.cluster")
    parser.add_argument("--rates", default="1gbit,2.5gbit")
    parser.add_argument("--nodes", default="1,3,8")
    parser.add_argument("--systems", default="cluster,independent,distribution")
    parser.add_argument("--size", default="256MiB")
    parser.add_argument("--nic", default="2.5gbit", help="peer NIC rate of the model check; "
                        "empty: no model check")  # fmt: skip
    parser.add_argument("--model-rate", default="1gbit", help="link rate of the model check")
    parser.add_argument("--results", default=str(RESULTS))
    parser.add_argument("--inside", help=argparse.SUPPRESS)
    parser.add_argument("--plan", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.inside:
        inner(args)
        return 0
    return outer(args)


if __name__ == "__main__":
    sys.exit(main())

__all__ = ["main", "simulate"]
