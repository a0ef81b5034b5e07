"""A private network namespace for the cluster benchmarks: loopback only, one port shaped by tc.

On 2 shared cores loopback transfers are CPU-bound, which hides what a cluster saves. Inside a
namespace of its own (``ip netns add``; root) a benchmark runs its daemons and upstream on the
namespace's ``lo`` and shapes the upstream's replies to a link rate with an htb class (netem is
not built into this kernel): traffic from source port ``port`` goes to class 1:1 at ``rate``,
everything else to a default class that is effectively unlimited. The class's byte counter is
the upstream egress. Nothing here can reach outside the namespace: it has no other interface.

    with Namespace.create() as ns:
        ns.shape_port(5000, "1gbit")
        proc = subprocess.Popen(ns.argv(["docker-registry", "serve", cfg]))
        ...
        upstream_bytes = ns.shaped_bytes()
"""

from __future__ import annotations

import contextlib
import itertools
import os
import re
import signal
import subprocess
from collections.abc import Sequence
from types import TracebackType
from typing import Self

__all__ = ["Namespace", "NetnsError"]

SHAPED = "1:1"
UNSHAPED = "1:99"
_names = itertools.count()
_CLASS_SENT = re.compile(r"^class htb (\S+) .*?\n\s*Sent (\d+) bytes", re.MULTILINE)


class NetnsError(RuntimeError):
    """An ``ip``/``tc`` command failed (its stderr is in the message)."""


def _run(argv: Sequence[str]) -> str:
    result = subprocess.run(argv, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise NetnsError(f"{' '.join(argv)}: exit {result.returncode}: {result.stderr.strip()}")
    return result.stdout


class Namespace:
    """A network namespace with ``lo`` up; deleted (with whatever runs in it) by ``delete``."""

    def __init__(self, name: str) -> None:
        self.name = name

    @classmethod
    def create(cls, prefix: str = "cachesvc-bench") -> Namespace:
        """A new namespace named after this process (so parallel runs do not collide)."""
        ns = cls(f"{prefix}-{os.getpid()}-{next(_names)}")
        _run(["ip", "netns", "add", ns.name])
        try:
            ns.run(["ip", "link", "set", "lo", "up"])
        except BaseException:
            ns.delete()
            raise
        return ns

    def argv(self, argv: Sequence[str]) -> list[str]:
        """``argv`` run inside the namespace (for Popen or ManagedProcess)."""
        return ["ip", "netns", "exec", self.name, *argv]

    def run(self, argv: Sequence[str]) -> str:
        """Run ``argv`` inside the namespace to completion; its stdout, or ``NetnsError``."""
        return _run(self.argv(argv))

    def shape_port(self, port: int, rate: str) -> None:
        """Limit what leaves TCP source port ``port`` on ``lo`` to ``rate`` (tc units: 1gbit).

        The burst is a 4 ms worth of the rate (at least 128 KiB) because loopback packets are
        up to 64 KiB: a smaller burst would throttle below the rate.
        """
        bits = _tc_rate_bits(rate)
        burst = max(128 * 1024, int(bits / 8 * 0.004))
        tc = ["tc"]
        self.run([*tc, "qdisc", "add", "dev", "lo", "root", "handle", "1:", "htb",
                  "default", UNSHAPED.split(":")[1]])  # fmt: skip
        self.run([*tc, "class", "add", "dev", "lo", "parent", "1:", "classid", SHAPED, "htb",
                  "rate", rate, "burst", str(burst), "cburst", str(burst),
                  "quantum", "65536"])  # fmt: skip
        self.run([*tc, "class", "add", "dev", "lo", "parent", "1:", "classid", UNSHAPED, "htb",
                  "rate", "100gbit", "quantum", "65536"])  # fmt: skip
        for prio, (proto, match) in enumerate((("ip", "ip"), ("ipv6", "ip6")), start=1):
            self.run([*tc, "filter", "add", "dev", "lo", "parent", "1:", "protocol", proto,
                      "prio", str(prio), "u32", "match", match, "sport", str(port), "0xffff",
                      "flowid", SHAPED])  # fmt: skip

    def shape_sources(self, hosts: Sequence[str], port: int, rate: str) -> list[str]:
        """Give each of ``hosts`` its own "NIC": what leaves ``host:port`` is limited to ``rate``.

        Call after :meth:`shape_port` (it adds classes under the same htb root). The cluster
        benchmark uses it for the peer listeners, so a fan-out model with a known NIC rate can
        be checked against a run. Returns the class ids, one per host, in order.
        """
        bits = _tc_rate_bits(rate)
        burst = max(128 * 1024, int(bits / 8 * 0.004))
        classes = []
        for i, host in enumerate(hosts):
            classid = f"1:{10 + i}"
            self.run(["tc", "class", "add", "dev", "lo", "parent", "1:", "classid", classid,
                      "htb", "rate", rate, "burst", str(burst), "cburst", str(burst),
                      "quantum", "65536"])  # fmt: skip
            self.run(["tc", "filter", "add", "dev", "lo", "parent", "1:", "protocol", "ip",
                      "prio", str(10 + i), "u32", "match", "ip", "src", f"{host}/32",
                      "match", "ip", "sport", str(port), "0xffff", "flowid", classid])  # fmt: skip
            classes.append(classid)
        return classes

    def shaped_bytes(self, classid: str = SHAPED) -> int:
        """Bytes sent through htb class ``classid`` (the shaped port's egress) so far."""
        out = self.run(["tc", "-s", "class", "show", "dev", "lo"])
        for found, sent in _CLASS_SENT.findall(out):
            if found == classid:
                return int(sent)
        raise NetnsError(f"no htb class {classid} in namespace {self.name}:\n{out}")

    def delete(self) -> None:
        """Kill what still runs in the namespace, then delete it; idempotent."""
        pids = subprocess.run(["ip", "netns", "pids", self.name], capture_output=True,
                              text=True, check=False).stdout.split()  # fmt: skip
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(pid), signal.SIGKILL)  # only ever what this run started in it
        subprocess.run(["ip", "netns", "del", self.name], capture_output=True, check=False)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.delete()


def _tc_rate_bits(rate: str) -> float:
    m = re.fullmatch(r"(\d+(?:\.\d+)?)([kmg]?)bit", rate.strip().lower())
    if not m:
        raise ValueError(f"expected a tc rate such as 1gbit or 2.5gbit, got {rate!r}")
    return float(m.group(1)) * {"": 1, "k": 1e3, "m": 1e6, "g": 1e9}[m.group(2)]
