"""Free loopback ports for the children the harness starts."""

from __future__ import annotations

import socket

LOOPBACK = "127.0.0.1"


def free_port() -> int:
    """Return a loopback TCP port that was free a moment ago (bind to port 0, then release it).

    The port is handed to a child that binds it itself, so there is a short race with other
    programs; on a benchmark machine that is acceptable, and start-up fails loudly if it is lost.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        port: int = sock.getsockname()[1]
        return port
