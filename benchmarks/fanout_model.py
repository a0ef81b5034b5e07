"""A model of cluster mode's fan-out tree: how long until every node has a blob, and who sends what.

``python -m benchmarks.fanout_model [--nic 1gbit] [--fanout 8] [--size 256MiB] [--nodes 1,8,5000]``

The rollout it models (issue 13, "Hot blobs"): N nodes ask for one blob at once. The owner fetches
it once from upstream; it streams it to at most ``fanout`` peers and redirects the others to
members already receiving it, which do the same, so the nodes form a tree filled breadth first
(the order redirects hand out places). Every transfer streams as bytes land (a child does not
wait for its parent to finish), so:

- a node's rate is the least of its parent's rate and the parent's NIC shared equally between the
  parent's children (each NIC is full duplex: receiving does not slow sending);
- the owner's rate is the least of the upstream link and its NIC;
- a node starts ``hop_latency`` after its parent (one request, plus one redirect below level 1),
  and is done at ``start + size / rate``.

Time until every node has the blob is therefore about ``depth * hop_latency + size / rate``
with ``rate = min(upstream, nic / fanout)`` for a full tree: fanout trades a shallower tree for a
slower stream per child. Upstream bytes are the blob once; a node sends at most ``fanout`` copies.
Not modelled: CPU (the measured runs on 2 shared cores are CPU-bound), TCP slow start, disks.
The N = 8 measurement of the cluster benchmark is what this is to be checked against.
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["Rollout", "simulate"]

_RATE = re.compile(r"(\d+(?:\.\d+)?)\s*([kmg]?)(bit|b)?(?:/s|ps)?", re.IGNORECASE)
_SIZE = re.compile(r"(\d+(?:\.\d+)?)\s*([KMGT]?)(i?)B?", re.IGNORECASE)


@dataclass(frozen=True, slots=True)
class Rollout:
    """The outcome of one modelled rollout."""

    nodes: int
    fanout: int
    depth: int  # levels below the owner (0: the owner alone)
    seconds: float  # until the last node has the whole blob
    upstream_bytes: int
    max_sent_bytes: int  # the most one node sent to peers
    mean_sent_bytes: float
    slowest_rate: float  # bytes/s of the slowest stream in the tree


def simulate(
    nodes: int,
    *,
    nic_bps: float,
    fanout: int,
    size: int,
    upstream_bps: float | None = None,
    hop_latency: float = 0.002,
) -> Rollout:
    """Model ``nodes`` nodes fetching one ``size``-byte blob; rates in bits per second."""
    if nodes < 1 or fanout < 1 or size < 1 or nic_bps <= 0:
        raise ValueError("nodes, fanout, size and nic_bps must be positive")
    nic = nic_bps / 8
    upstream = (upstream_bps if upstream_bps is not None else nic_bps) / 8
    parents = [-1] + [(i - 1) // fanout for i in range(1, nodes)]  # breadth first
    children = [0] * nodes
    for parent in parents[1:]:
        children[parent] += 1
    rate = [min(upstream, nic)] + [0.0] * (nodes - 1)
    start = [hop_latency] + [0.0] * (nodes - 1)
    depth = [0] * nodes
    for i in range(1, nodes):  # a parent always has a smaller index than its children
        p = parents[i]
        rate[i] = min(rate[p], nic / children[p])
        depth[i] = depth[p] + 1
        start[i] = start[p] + (hop_latency if depth[i] == 1 else 2 * hop_latency)
    sent = [c * size for c in children]
    return Rollout(
        nodes=nodes,
        fanout=fanout,
        depth=max(depth),
        seconds=max(s + size / r for s, r in zip(start, rate, strict=True)),
        upstream_bytes=size,
        max_sent_bytes=max(sent),
        mean_sent_bytes=sum(sent) / nodes,
        slowest_rate=min(rate),
    )


def parse_rate(text: str) -> float:
    """``"1gbit"``, ``"2.5Gbit/s"``, ``"100mbit"`` into bits per second."""
    m = _RATE.fullmatch(text.strip())
    if not m:
        raise argparse.ArgumentTypeError(f"expected a rate such as 1gbit, got {text!r}")
    bits = float(m.group(1)) * {"": 1, "k": 1e3, "m": 1e6, "g": 1e9}[m.group(2).lower()]
    return bits * 8 if m.group(3) == "B" else bits


def parse_size(text: str) -> int:
    """``"256MiB"``, ``"1GiB"``, ``"4096"`` into bytes."""
    m = _SIZE.fullmatch(text.strip())
    if not m:
        raise argparse.ArgumentTypeError(f"expected a size such as 256MiB, got {text!r}")
    base = 1024 if m.group(3) else 1000
    return int(float(m.group(1)) * base ** " KMGT".index(m.group(2).upper() or " "))


def table(rows: Sequence[Rollout], size: int) -> str:
    """A markdown table of ``rows``."""
    lines = [
        "| nodes | fanout | depth | seconds until all have it | upstream x blob "
        "| max sent x blob | mean sent x blob |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r.nodes} | {r.fanout} | {r.depth} | {r.seconds:.2f} | "
            f"{r.upstream_bytes / size:.2f} | {r.max_sent_bytes / size:.0f} | "
            f"{r.mean_sent_bytes / size:.2f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.fanout_model")
    parser.add_argument("--nic", type=parse_rate, default=parse_rate("1gbit"))
    parser.add_argument("--upstream", type=parse_rate, default=None, help="default: --nic")
    parser.add_argument("--fanout", type=int, action="append", help="repeatable; default 8")
    parser.add_argument("--size", type=parse_size, default=parse_size("256MiB"))
    parser.add_argument("--nodes", default="1,3,8,100,1000,5000")
    parser.add_argument("--hop-latency", type=float, default=0.002, help="seconds per hop")
    args = parser.parse_args(argv)
    rows = [
        simulate(int(n), nic_bps=args.nic, fanout=f, size=args.size,
                 upstream_bps=args.upstream, hop_latency=args.hop_latency)
        for f in (args.fanout or [8])
        for n in args.nodes.split(",")
    ]  # fmt: skip
    single = args.size / (min(args.nic, args.upstream or args.nic) / 8)
    print(f"one node alone (size / link rate): {single:.2f} s")
    print(table(rows, args.size))


if __name__ == "__main__":
    main()
