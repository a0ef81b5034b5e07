"""benchmarks/netns.py works here as root: a namespace, a shaped port, its byte counter."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from benchmarks.netns import Namespace, NetnsError

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="ip netns needs root")

SERVER = textwrap.dedent("""
    import socket, sys
    srv = socket.create_server(("127.0.0.1", int(sys.argv[1])))
    print("ready", flush=True)
    conn, _ = srv.accept()
    conn.sendall(b"x" * int(sys.argv[2]))
    conn.close()
""")
CLIENT = textwrap.dedent("""
    import socket, sys
    s = socket.create_connection(("127.0.0.1", int(sys.argv[1])))
    n = 0
    while chunk := s.recv(1 << 16):
        n += len(chunk)
    print(n)
""")


def test_a_shaped_port_counts_its_bytes(tmp_path: Path) -> None:
    size = 3 * 2**20
    (tmp_path / "server.py").write_text(SERVER)
    (tmp_path / "client.py").write_text(CLIENT)
    with Namespace.create("cachesvc-test") as ns:
        assert ns.name in subprocess.run(["ip", "netns", "list"], capture_output=True,
                                         text=True, check=True).stdout  # fmt: skip
        ns.shape_port(18080, "200mbit")
        assert ns.shaped_bytes() == 0
        argv = ns.argv([sys.executable, str(tmp_path / "server.py"), "18080", str(size)])
        with subprocess.Popen(argv, stdout=subprocess.PIPE, text=True) as server:
            assert server.stdout is not None
            assert server.stdout.readline().strip() == "ready"
            received = ns.run([sys.executable, str(tmp_path / "client.py"), "18080"])
            assert int(received) == size
            assert server.wait(timeout=30) == 0
        shaped = ns.shaped_bytes()
        assert size <= shaped < size * 1.1  # payload plus TCP/IP headers of the server's side
        assert ns.shaped_bytes("1:99") > 0  # the client's ACKs went to the default class
        name = ns.name
    assert name not in subprocess.run(["ip", "netns", "list"], capture_output=True,
                                      text=True, check=True).stdout  # fmt: skip


def test_the_namespace_has_no_way_out() -> None:
    with Namespace.create("cachesvc-test") as ns:
        links = ns.run(["ip", "-o", "link", "show"])
        assert [line.split(":")[1].strip() for line in links.splitlines()] == ["lo"]


def test_errors_name_the_command() -> None:
    with Namespace.create("cachesvc-test") as ns, pytest.raises(NetnsError, match="no htb class"):
        ns.shaped_bytes()
    with pytest.raises(ValueError, match="tc rate"):
        Namespace("unused").shape_port(1, "fast")
