"""Inside the benchmark's network namespace: an upstream, N caches, N clients, counters.

Runs in the namespace ``benchmarks.cluster`` made (``ip netns exec``), so fixed addresses are
free: the upstream (the distribution registry) on 127.0.0.1:6000, whose replies the htb class
1:1 shapes to the link rate; node k's mirror, peer and admin listeners on 127.0.0.k+2:5000,
5001, 5002. A pull is what containerd does per node: the manifest by tag, then every blob,
each blob by ``curl -o /dev/null`` (C, so the clients cost little of the 2 cores).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from benchmarks.content import MANIFEST_ACCEPT, Image, Layout, push_image
from benchmarks.netns import Namespace
from benchmarks.processes import Child
from benchmarks.revision import python_env
from benchmarks.systems import REGISTRY_BINARY, REPO_ROOT
from cachesvc.cluster.ranking import BlobKey, ranking
from cachesvc.config.peeraddress import PeerAddress

UPSTREAM = "127.0.0.1:6000"
MIRROR_PORT, PEER_PORT, ADMIN_PORT = 5000, 5001, 5002
REPOSITORY, TAG = "bench/app", "v1"


@dataclass(slots=True)
class Run:
    """One measured rollout."""

    system: str  # cluster | independent | distribution
    nodes: int
    rate: str
    killed: bool = False
    nic: str | None = None  # peer listeners shaped to this rate (the model check)
    fanout: int = 8
    seconds: float = 0.0  # from the first request until the last surviving node has it all
    upstream_bytes: int = 0  # the shaped class's byte counter over the run
    image_bytes: int = 0
    sent_to_peers: list[int] = field(default_factory=list)  # per daemon, bytes
    complete: int = 0  # nodes whose pull completed with every byte
    cpu_busy: float = 0.0  # of both cores, over the run
    errors: list[str] = field(default_factory=list)


def host(k: int) -> str:
    """Node k's loopback address (127.0.0.2 for node 0)."""
    return f"127.0.0.{2 + k}"


def _cpu() -> tuple[float, float]:
    fields = [float(x) for x in Path("/proc/stat").read_text().split("\n")[0].split()[1:]]
    idle = fields[3] + fields[4]
    return sum(fields), idle


def _config(k: int, n: int, root: Path, system: str, fanout: int) -> dict[str, Any]:
    data: dict[str, Any] = {
        "listen": f"{host(k)}:{MIRROR_PORT}",
        "admin": {"listen": f"{host(k)}:{ADMIN_PORT}"},
        "storage": {"root": str(root / f"node{k}")},
        "default_registry": UPSTREAM,
        "registries": {UPSTREAM: {"endpoints": [f"http://{UPSTREAM}"], "tag_ttl": "60s"}},
        "log": {"level": "warning", "format": "json"},
    }
    if system == "cluster":
        data["cluster"] = {
            "listen": f"{host(k)}:{PEER_PORT}",
            "peers": [f"{host(i)}:{PEER_PORT}" for i in range(n)],
            "token_file": str(root / "peer-token"),
            "fanout": fanout,
        }
    return data


def _registry_config(k: int, root: Path) -> str:
    return "\n".join([
        "version: 0.1", "log:", "  level: error", "  accesslog:", "    disabled: true",
        "storage:", "  cache:", "    blobdescriptor: inmemory", "  filesystem:",
        f"    rootdirectory: {root / f'proxy{k}'}", "http:", f"  addr: {host(k)}:{MIRROR_PORT}",
        "proxy:", f"  remoteurl: http://{UPSTREAM}", "",
    ])  # fmt: skip


def start_nodes(system: str, n: int, root: Path, fanout: int) -> list[Child]:
    """N caches of ``system``, ready."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "peer-token").write_text("bench-peer-token\n")
    children: list[Child] = []
    try:
        for k in range(n):
            config = root / f"node{k}.yml"
            if system == "distribution":
                config.write_text(_registry_config(k, root))
                argv = [REGISTRY_BINARY, "serve", str(config)]
                children.append(Child(f"proxy{k}", argv, root / f"node{k}.log"))
            else:
                config.write_text(json.dumps(_config(k, n, root, system, fanout)))
                argv = [sys.executable, "-m", "cachesvc", "serve", "--config", str(config)]
                children.append(Child(f"node{k}", argv, root / f"node{k}.log",
                                      env=python_env(REPO_ROOT), cwd=REPO_ROOT))  # fmt: skip
        for k, child in enumerate(children):
            port = MIRROR_PORT if system == "distribution" else ADMIN_PORT
            path = "/v2/" if system == "distribution" else "/readyz"
            child.wait_http(f"http://{host(k)}:{port}{path}", timeout=60)
    except BaseException:
        stop_nodes(children)
        raise
    return children


def stop_nodes(children: Sequence[Child]) -> None:
    """Stop every cache (SIGTERM, then SIGKILL)."""
    for child in children:
        child.stop()


async def _curl(url: str) -> int:
    proc = await asyncio.create_subprocess_exec(
        "curl", "-sf", "-o", "/dev/null", "-w", "%{size_download}", url,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    out, _ = await proc.communicate()
    if proc.returncode != 0:
        raise RuntimeError(f"curl {url}: exit {proc.returncode}")
    return int(out.decode() or 0)


async def pull(http: aiohttp.ClientSession, k: int, system: str, image: Image) -> float:
    """Node k's pull; the monotonic time it completed with every byte (RuntimeError if not)."""
    base = f"http://{host(k)}:{MIRROR_PORT}/v2/{REPOSITORY}"
    query = "" if system == "distribution" else f"?ns={UPSTREAM}"
    url = f"{base}/manifests/{TAG}{query}"
    async with http.get(url, headers={"Accept": MANIFEST_ACCEPT}) as resp:
        if resp.status != 200:
            raise RuntimeError(f"node {k}: manifest {resp.status}")
        manifest = json.loads(await resp.read())
    blobs = [manifest["config"], *manifest["layers"]]
    got = await asyncio.gather(*(_curl(f"{base}/blobs/{b['digest']}{query}") for b in blobs))
    if got != [b["size"] for b in blobs]:
        raise RuntimeError(f"node {k}: received {got}, expected {[b['size'] for b in blobs]}")
    return time.monotonic()


async def metric(http: aiohttp.ClientSession, k: int, name: str) -> float:
    """Sum of a metric's samples on node k (0 when unreachable: a killed node)."""
    try:
        async with http.get(f"http://{host(k)}:{ADMIN_PORT}/metrics") as resp:
            text = await resp.text()
    except aiohttp.ClientError:
        return 0.0
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith(name) and not line.startswith("#"))  # fmt: skip


def owner_of(image: Image, n: int) -> int:
    """The node that owns the image's (one big) layer."""
    members = [PeerAddress(host(k), PEER_PORT) for k in range(n)]
    first = ranking(BlobKey(image.layers[0].digest), members)[0]
    return members.index(first)


async def _kill_midway(http: aiohttp.ClientSession, child: Child, k: int, size: int) -> None:
    """SIGKILL node k once it has received a third of the layer from upstream."""
    while True:
        if await metric(http, k, "cachesvc_upstream_bytes_total") >= size / 3:
            break
        await asyncio.sleep(0.02)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(child.pid, signal.SIGKILL)


async def measure(run: Run, ns: Namespace, image: Image, children: Sequence[Child]) -> Run:
    """One rollout: every node pulls at once; counters before and after."""
    size = image.layers[0].size
    run.image_bytes = sum(d.size for d in (*image.layers, *image.configs))
    killed = owner_of(image, run.nodes) if run.killed else None
    before, cpu0, t0 = ns.shaped_bytes(), _cpu(), time.monotonic()
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=600)) as http:
        pulls = [asyncio.ensure_future(pull(http, k, run.system, image)) for k in range(run.nodes)]
        if killed is not None:
            await _kill_midway(http, children[killed], killed, size)
        done = await asyncio.gather(*pulls, return_exceptions=True)
        ends = [d for k, d in enumerate(done) if isinstance(d, float) and k != killed]
        run.errors = [f"node {k}: {d}" for k, d in enumerate(done)
                      if isinstance(d, BaseException) and k != killed]  # fmt: skip
        run.complete = len(ends)
        run.seconds = (max(ends) - t0) if ends else 0.0
        await asyncio.sleep(0.5)  # trailing ACKs and commits
        run.upstream_bytes = ns.shaped_bytes() - before
        if run.system == "cluster":
            run.sent_to_peers = [int(await metric(http, k, "cachesvc_peer_sent_bytes_total"))
                                 for k in range(run.nodes) if k != killed]  # fmt: skip
    cpu1 = _cpu()
    total, idle = cpu1[0] - cpu0[0], cpu1[1] - cpu0[1]
    run.cpu_busy = 1 - idle / total if total else 0.0
    return run


async def upstream_with_image(ns: Namespace, root: Path, size: int) -> tuple[Child, Image]:
    """The shaped upstream registry holding one image of one ``size``-byte layer."""
    (root / "upstream").mkdir(parents=True)
    config = root / "upstream.yml"
    config.write_text("\n".join([
        "version: 0.1", "log:", "  level: error", "  accesslog:", "    disabled: true",
        "storage:", "  filesystem:", f"    rootdirectory: {root / 'upstream'}",
        "http:", f"  addr: {UPSTREAM}", "",
    ]))  # fmt: skip
    child = Child("upstream", [REGISTRY_BINARY, "serve", str(config)], root / "upstream.log")
    child.wait_http(f"http://{UPSTREAM}/v2/")
    image = Layout(root / "content").image(REPOSITORY, TAG, [size])
    async with aiohttp.ClientSession() as http:
        await push_image(http, f"http://{UPSTREAM}", image)
    return child, image


def run_scenario(run: Run, ns: Namespace, image: Image, root: Path) -> Run:
    """Start the caches, measure, stop them, drop their storage."""
    workdir = root / f"{run.system}-{run.nodes}-{int(run.killed)}-{run.nic}-{run.fanout}"
    children = start_nodes(run.system, run.nodes, workdir, run.fanout)
    try:
        return asyncio.run(measure(run, ns, image, children))
    finally:
        stop_nodes(children)
        subprocess.run(["rm", "-rf", str(workdir)], check=False)


def as_json(runs: Sequence[Run]) -> str:
    """The runs as JSON lines (what the inner run hands the outer one)."""
    return "".join(json.dumps(asdict(r)) + "\n" for r in runs)
