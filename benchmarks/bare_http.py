"""``python -m benchmarks.bare_http``: what one asyncio process can answer, without cachesvc.

The ceiling ``cachesvc.server.fastpath`` was measured against: the same fixed 900-byte
manifest answer from a bare aiohttp ``web.Application``, from the same handler on the
low-level ``web.Server``, and from a plain ``asyncio.Protocol`` writing prebuilt bytes;
``wrk -t1 -c32`` against each in turn (loopback, one process each, default asyncio loop).
"""

from __future__ import annotations

import argparse
import asyncio
import re
import socket
import subprocess
import sys
import time

from aiohttp import web

from benchmarks.ports import free_port

BODY = b'{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json"}' * 12
HEADERS = {
    "Content-Type": "application/vnd.oci.image.manifest.v1+json",
    "Docker-Content-Digest": "sha256:" + "a" * 64,
    "Docker-Distribution-API-Version": "registry/2.0",
}
PREBUILT = (
    b"HTTP/1.1 200 OK\r\n"
    + b"".join(f"{k}: {v}\r\n".encode() for k, v in HEADERS.items())
    + f"Content-Length: {len(BODY)}\r\n\r\n".encode()
    + BODY
)
KINDS = ("application", "server", "protocol")


async def _handler(_: web.BaseRequest) -> web.Response:
    return web.Response(body=BODY, headers=HEADERS)


class _Prebuilt(asyncio.Protocol):
    """Answers every complete request head with ``PREBUILT`` (no parsing beyond that)."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        self._buffer = b""

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        while (end := self._buffer.find(b"\r\n\r\n")) >= 0:
            self._buffer = self._buffer[end + 4 :]
            self._transport.write(PREBUILT)


async def _serve(kind: str, port: int) -> None:
    loop = asyncio.get_running_loop()
    if kind == "protocol":
        await loop.create_server(_Prebuilt, "127.0.0.1", port)
    elif kind == "server":
        await loop.create_server(web.Server(_handler), "127.0.0.1", port)
    else:
        app = web.Application()
        app.router.add_get("/v2/{name:.+}/manifests/{reference}", _handler)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port).start()
    await asyncio.Event().wait()


def _wait_listening(port: int, limit: float = 10.0) -> None:
    deadline = time.monotonic() + limit
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def _rate(port: int, seconds: int) -> float:
    url = f"http://127.0.0.1:{port}/v2/a/b/manifests/sha256:{'a' * 64}"
    argv = ["wrk", "-t1", "-c32", f"-d{seconds}s", url]
    output = subprocess.run(argv, capture_output=True, text=True, check=True).stdout
    found = re.search(r"Requests/sec:\s+([\d.]+)", output)
    if found is None:
        raise RuntimeError(f"wrk printed no rate: {output}")
    return float(found.group(1))


def main(argv: list[str] | None = None) -> int:
    """Start each kind of server in its own process, measure it with wrk, print the rates."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bare_http", description=__doc__)
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("--serve", choices=KINDS, help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve:
        asyncio.run(_serve(args.serve, args.port))
        return 0
    for kind in KINDS:
        port = free_port()
        child = subprocess.Popen(
            [sys.executable, "-m", "benchmarks.bare_http", "--serve", kind, "--port", str(port)]
        )
        try:
            _wait_listening(port)
            _rate(port, 1)  # warm-up
            print(f"{kind:12} {_rate(port, args.seconds):10,.0f} req/s")
        finally:
            child.terminate()
            child.wait(timeout=10)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
