"""``python -m benchmarks.ab [--a REV] [--b REV] [--reps N]``: two revisions' hit paths, A/B.

For trying a change to a hit path: shorter than ``python -m benchmarks --before REV`` (no
distribution proxy, no cold fills), still interleaved in one run (A B A B ...), since two
separate runs on this shared machine differ by more than most such changes. It measures the
manifest by digest (``wrk -t1 -c32``: requests/s and p99) and the warm 256 MiB hit (one
client; nginx with sendfile as the ceiling), and prints medians and B / A. It also reports
each daemon's CPU per request (from /proc): on a machine other work shares, the rates swing
far more than a small change moves them (identical A and B have differed by 2x here), the
CPU a request costs much less.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import statistics
import tempfile
from collections import defaultdict
from pathlib import Path

import aiohttp

from benchmarks.content import MANIFEST_ACCEPT, Layout, push_image
from benchmarks.cpu import cpu_seconds
from benchmarks.load import download, download_executor, request_rate
from benchmarks.measurement import MIB
from benchmarks.revision import exported
from benchmarks.systems import REPO_ROOT, Service, start_cachesvc, start_nginx, start_registry

CONNECTIONS = 32


def _tree_cpu_seconds(pid: int) -> float:
    """CPU of ``pid`` and its direct children (nginx's master does no work; its worker does)."""
    total = cpu_seconds(pid)
    for task in Path(f"/proc/{pid}/task").iterdir():
        for child in (task / "children").read_text().split():
            total += cpu_seconds(int(child))
    return total


async def _run(
    roots: dict[str, Path], reps: int, seconds: float, blob_size: int
) -> dict[str, list[float]]:
    asyncio.get_running_loop().set_default_executor(download_executor())
    workdir = Path(tempfile.mkdtemp(prefix="cachesvc-ab-"))
    services: list[Service] = []
    samples: dict[str, list[float]] = defaultdict(list)
    try:
        layout = Layout(workdir / "layout")
        upstream = start_registry("upstream", workdir)
        services.append(upstream)
        nginx = start_nginx(workdir, layout.root / "blobs")
        services.append(nginx)
        caches: dict[str, Service] = {}
        for name, root in roots.items():
            caches[name] = start_cachesvc(workdir, upstream, f"cachesvc-{name}", source_root=root)
            services.append(caches[name])
        small = layout.image("bench/small", "latest", [4096, 8192, 16384])
        big = layout.image("bench/big", "latest", [blob_size])
        async with aiohttp.ClientSession() as session:
            for image in (small, big):
                await push_image(session, upstream.url, image)
        blob = big.layers[0]
        digest = small.manifest.digest
        manifest = {k: f"{s.url}/v2/bench/small/manifests/{digest}" for k, s in caches.items()}
        blobs = {k: f"{s.url}/v2/bench/big/blobs/{blob.digest}" for k, s in caches.items()}
        blobs["nginx"] = f"{nginx.url}/sha256/{blob.digest.removeprefix('sha256:')}"
        headers = {"Accept": MANIFEST_ACCEPT}
        for name in caches:  # warm: fill the blob, hold the manifest
            await request_rate(manifest[name], CONNECTIONS, 1, headers)
        for url in blobs.values():
            await download(url, blob.size)
        os.sync()
        for rep in range(reps):
            order = ["A", "B"] if rep % 2 == 0 else ["B", "A"]
            for name in order:
                pid = caches[name].child.pid
                before = cpu_seconds(pid)
                rate = await request_rate(manifest[name], CONNECTIONS, seconds, headers)
                spent = cpu_seconds(pid) - before
                if rate.non_2xx or rate.errors:
                    raise RuntimeError(f"{name}: {rate.non_2xx} non-2xx, {rate.errors} errors")
                samples[f"{name} manifest req/s"].append(rate.requests_per_second)
                samples[f"{name} manifest p99 ms"].append(rate.p99_ms)
                requests = rate.requests_per_second * round(seconds)
                samples[f"{name} manifest CPU us/req"].append(spent / requests * 1e6)
            for name in [*order, "nginx"]:
                pid = caches[name].child.pid if name in caches else nginx.child.pid
                before = _tree_cpu_seconds(pid)
                transfer = await download(blobs[name], blob.size)
                samples[f"{name} warm MiB/s"].append(transfer.mib_per_second)
                spent = _tree_cpu_seconds(pid) - before
                samples[f"{name} warm CPU ms/hit"].append(spent * 1e3)
    finally:
        for service in reversed(services):
            service.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    return samples


def _report(samples: dict[str, list[float]]) -> str:
    medians = {key: statistics.median(values) for key, values in samples.items()}
    lines = [
        f"{key:24} median {value:10.2f}   {[round(v, 1) for v in samples[key]]}"
        for key, value in sorted(medians.items())
    ]
    for what in (
        "manifest req/s",
        "manifest p99 ms",
        "manifest CPU us/req",
        "warm MiB/s",
        "warm CPU ms/hit",
    ):
        a, b = medians.get(f"A {what}"), medians.get(f"B {what}")
        if a and b:
            lines.append(f"B / A {what:20} {b / a:.3f}")
    nginx = medians.get("nginx warm MiB/s")
    for name in ("A", "B"):
        warm = medians.get(f"{name} warm MiB/s")
        if warm and nginx:
            lines.append(f"{name} warm / nginx          {warm / nginx:.3f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Run the A/B measurement and print it."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.ab", description=__doc__)
    parser.add_argument("--a", default="HEAD", help="the revision run as A (default HEAD)")
    parser.add_argument(
        "--b", default=None, help="the revision run as B (default: this checkout, uncommitted too)"
    )
    parser.add_argument("--reps", type=int, default=6)
    parser.add_argument("--seconds", type=float, default=5.0, help="per wrk run")
    parser.add_argument("--blob-mib", type=int, default=256)
    args = parser.parse_args(argv)
    with contextlib.ExitStack() as stack:
        a = stack.enter_context(exported(REPO_ROOT, args.a))
        b = None if args.b is None else stack.enter_context(exported(REPO_ROOT, args.b))
        print(f"A = {a.subject}; B = {f'this checkout ({REPO_ROOT})' if b is None else b.subject}")
        roots = {"A": a.root, "B": REPO_ROOT if b is None else b.root}
        samples = asyncio.run(_run(roots, args.reps, args.seconds, args.blob_mib * MIB))
    print(_report(samples))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
