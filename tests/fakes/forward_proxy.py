"""A fake forward (egress) proxy, as squid or a corporate proxy behaves, on loopback.

``CONNECT host:port`` opens a tunnel (https targets); a request in absolute form
(``GET http://host:port/path``) is passed on in origin form (plain http targets). With
``credentials`` set, a request without the matching ``Proxy-Authorization: Basic`` is
answered ``407``. Each connection's target and whether it was a tunnel are recorded;
the proxy never forwards to anything but loopback.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import ipaddress
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from urllib.parse import urlsplit


@dataclass
class ForwardProxy:
    credentials: tuple[str, str] | None = None
    url: str = ""
    seen: list[tuple[str, str]] = field(default_factory=list)  # (method, host:port)
    refused: int = 0
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)

    def targets(self) -> set[str]:
        """Every ``host:port`` a client reached through the proxy."""
        return {target for _, target in self.seen}

    def _authorized(self, head: list[str]) -> bool:
        if self.credentials is None:
            return True
        user, password = self.credentials
        wanted = "basic " + base64.b64encode(f"{user}:{password}".encode()).decode().lower()
        for line in head[1:]:
            name, _, value = line.partition(":")
            if name.strip().lower() == "proxy-authorization":
                return value.strip().lower() == wanted
        return False

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        upstream: asyncio.StreamWriter | None = None
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            raw = await reader.readuntil(b"\r\n\r\n")
            head = raw.decode("latin-1").split("\r\n")[:-2]
            method, target, version = head[0].split(" ")
            if not self._authorized(head):
                self.refused += 1
                writer.write(b"HTTP/1.1 407 Proxy Authentication Required\r\n"
                             b"Proxy-Authenticate: Basic realm=\"fake\"\r\n"
                             b"Content-Length: 0\r\nConnection: close\r\n\r\n")  # fmt: skip
                await writer.drain()
                return
            if method == "CONNECT":
                host, _, port = target.rpartition(":")
                first = b""
            else:
                parts = urlsplit(target)
                host, port = parts.hostname or "", str(parts.port or 80)
                path = parts.path + (f"?{parts.query}" if parts.query else "")
                rest = [line for line in head[1:] if not line.lower().startswith("proxy-")]
                first = "\r\n".join([f"{method} {path} {version}", *rest, "", ""]).encode()
            host = host.strip("[]")
            if not ipaddress.ip_address(host).is_loopback:  # tests never leave loopback
                raise ValueError(f"refusing non-loopback target {host}")
            self.seen.append((method, f"{host}:{port}"))
            up_reader, upstream = await asyncio.open_connection(host, int(port))
            if method == "CONNECT":
                writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
            else:
                upstream.write(first)
            await asyncio.gather(_pipe(reader, upstream), _pipe(up_reader, writer))
        except (OSError, ValueError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass
        finally:
            self._tasks.discard(task)
            for stream in (writer, upstream):
                if stream is not None:
                    stream.close()
                    with contextlib.suppress(OSError):
                        await stream.wait_closed()


async def _pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
    try:
        while data := await source.read(1 << 16):
            sink.write(data)
            await sink.drain()
    except OSError:
        pass
    finally:
        with contextlib.suppress(OSError):
            sink.write_eof()


@asynccontextmanager
async def running_proxy(proxy: ForwardProxy) -> AsyncIterator[ForwardProxy]:
    """Serve ``proxy`` on a free loopback port and set its ``url``."""
    server = await asyncio.start_server(proxy._handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    proxy.url = f"http://127.0.0.1:{port}"
    try:
        yield proxy
    finally:
        server.close()
        for task in list(proxy._tasks):  # tunnels a client kept open
            task.cancel()
        await asyncio.gather(*proxy._tasks, return_exceptions=True)
        await server.wait_closed()
