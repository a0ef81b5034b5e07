"""dnsmasq on 127.0.0.1 and a free port, answering from a hosts file rewritten at run time.

The cluster's membership follows a headless Service's A/AAAA records; tests stand that up with
a real DNS server (Debian ``dnsmasq-base``). dnsmasq answers only from the hosts file given
(``--no-hosts --no-resolv``: no /etc/hosts, no upstream servers, so nothing leaves loopback)
and re-reads it on SIGHUP, which :meth:`Dnsmasq.set_records` sends after an atomic rewrite.
It runs as the current user in the foreground and is stopped by PID (tests/peers/process.py).
"""

from __future__ import annotations

import getpass
import os
import signal
import socket
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import dns.exception
import dns.message
import dns.query
import dns.rcode
import dns.rdatatype

from tests.peers.ports import LOOPBACK
from tests.peers.process import ManagedProcess, StartStop, start_until_ready

__all__ = ["DnsError", "Dnsmasq", "free_udp_and_tcp_port", "query"]


class DnsError(RuntimeError):
    """dnsmasq did not start, or did not serve the records it was given in time."""


def free_udp_and_tcp_port() -> int:
    """A port free for both UDP and TCP on 127.0.0.1 a moment ago (dnsmasq binds both)."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            udp.bind((LOOPBACK, 0))
            port: int = udp.getsockname()[1]
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
                try:
                    tcp.bind((LOOPBACK, port))
                except OSError:
                    continue
                return port
    raise DnsError("no port free for both UDP and TCP on 127.0.0.1")


def query(port: int, name: str, rdtype: str = "A", timeout: float = 0.5) -> dns.message.Message:
    """One UDP query to 127.0.0.1:``port``; raises ``dns.exception.Timeout`` without answer."""
    request = dns.message.make_query(name, dns.rdatatype.from_text(rdtype))
    return dns.query.udp(request, LOOPBACK, port=port, timeout=timeout)


def addresses(port: int, name: str, rdtype: str) -> set[str]:
    """The addresses dnsmasq answers for ``name`` and type ``rdtype`` right now."""
    answer = query(port, name, rdtype)
    return {rd.to_text() for rrset in answer.answer for rd in rrset if rrset.rdtype != 5}


class Dnsmasq(StartStop):
    """A dnsmasq serving ``records`` (name -> addresses, IPv4 and IPv6 alike).

    By default dnsmasq answers REFUSED for anything not in the hosts file, including the other
    record type of a name that has only A (or only AAAA) records: the "resolver refuses the
    other type" case. ``local_domain`` makes it authoritative for that domain instead (its
    ``--local``): NXDOMAIN for unknown names and an empty NOERROR answer for the other type.
    """

    def __init__(
        self,
        workdir: Path,
        records: Mapping[str, Sequence[str]],
        *,
        local_domain: str | None = None,
    ) -> None:
        self._local = [f"--local=/{local_domain}/"] if local_domain else []
        self._dir = workdir
        self._dir.mkdir(parents=True, exist_ok=True)
        self.hosts_file = self._dir / "hosts"
        self._records: dict[str, tuple[str, ...]] = {}
        self._write(records)
        self.port = 0
        self._proc: ManagedProcess | None = None

    @property
    def server(self) -> str:
        """``127.0.0.1:PORT``, as ``cluster.dns_servers`` takes it."""
        return f"{LOOPBACK}:{self.port}"

    @property
    def pid(self) -> int:
        if self._proc is None:
            raise DnsError("dnsmasq is not running")
        return self._proc.pid

    def start(self) -> None:
        """Start dnsmasq and wait until it answers."""
        from tests.peers.require import require  # pytest only where a test needs the binary

        binary = require("dnsmasq", "dnsmasq-base")

        def launch() -> ManagedProcess:
            self.port = free_udp_and_tcp_port()
            return ManagedProcess(
                [binary, "--keep-in-foreground", "--conf-file=/dev/null", "--no-hosts",
                 "--no-resolv", "--bind-interfaces", f"--listen-address={LOOPBACK}",
                 f"--port={self.port}", f"--addn-hosts={self.hosts_file}", "--pid-file=",
                 f"--user={getpass.getuser()}", "--log-facility=-", "--log-queries", *self._local],
                stdout_path=self._dir / "dnsmasq.out", stderr_path=self._dir / "dnsmasq.err",
            )  # fmt: skip

        self._proc = start_until_ready(
            launch, self._answers, name="dnsmasq", timeout=10.0, error=DnsError, attempts=3
        )
        self.wait_for_records()

    def stop(self) -> None:
        """Stop dnsmasq (SIGTERM, then SIGKILL); idempotent. Its port stops answering."""
        if self._proc is not None:
            self._proc.stop()
            self._proc = None

    def set_records(self, records: Mapping[str, Sequence[str]]) -> None:
        """Replace every record, make dnsmasq re-read them (SIGHUP) and wait until it serves them."""
        self._write(records)
        os.kill(self.pid, signal.SIGHUP)
        self.wait_for_records()

    def wait_for_records(self, timeout: float = 10.0) -> None:
        """Poll until dnsmasq's answers are exactly the records last written."""
        deadline = time.monotonic() + timeout
        while not self._serves_records():
            if time.monotonic() >= deadline:
                described = self._proc.describe() if self._proc else "not running"
                raise DnsError(f"dnsmasq does not serve {self._records}\n{described}")
            time.sleep(0.02)

    def _write(self, records: Mapping[str, Sequence[str]]) -> None:
        self._records = {name: tuple(addrs) for name, addrs in records.items()}
        lines = [f"{addr} {name}\n" for name, addrs in records.items() for addr in addrs]
        temp = self.hosts_file.with_suffix(".tmp")
        temp.write_text("".join(lines))
        temp.replace(self.hosts_file)  # never a half-written file when dnsmasq reads it

    def _answers(self) -> bool:
        try:
            query(self.port, "ready.invalid", timeout=0.2)
        except (dns.exception.Timeout, OSError):
            return False
        return True

    def _serves_records(self) -> bool:
        try:
            for name, expected in self._records.items():
                want = {str(a) for a in expected}
                got = addresses(self.port, name, "A") | addresses(self.port, name, "AAAA")
                if got != want:
                    return False
        except (dns.exception.Timeout, OSError):
            return False
        return True
