"""Where each request's header block starts and ends in a client's byte stream.

The header deadline (``connections``) needs to know, for every byte a client sends,
whether it belongs to a request's header block or to a request body, without reaching
into aiohttp's parser (issue 10: no private framework attributes). ``RequestFrames`` is
the minimal HTTP/1.1 request framing that needs: a head ends at the first ``CRLF CRLF``;
its body is ``Content-Length`` bytes, or chunked when ``Transfer-Encoding`` ends in
``chunked`` (chunk-size lines, data, CRLF, a zero chunk, trailers to an empty line),
else empty. It never interprets a request: aiohttp does that.

When the framing is something aiohttp refuses too (two lengths, a bad chunk-size line,
a head over ``MAX_HEAD`` bytes), ``broken`` is set and nothing more is tracked: the
caller then keeps the deadline running, so a confused tracker can only close a
connection early, never let a slow one live (aiohttp answers such a request 400 and
closes anyway).
"""

from __future__ import annotations

import enum

MAX_HEAD = 64 * 1024  # aiohttp refuses a header line over 8190 bytes; a head is far less
_MAX_LINE = 4096  # a chunk-size line (with extensions) or a trailer block
_HEX = b"0123456789abcdefABCDEF"


class _State(enum.Enum):
    HEAD = "head"
    LENGTH = "length"  # a Content-Length body
    SIZE = "size"  # a chunk-size line
    DATA = "data"  # chunk data
    DATA_END = "data-end"  # the CRLF after chunk data
    TRAILERS = "trailers"
    BROKEN = "broken"


class RequestFrames:
    """Incremental request framing of one connection (see the module docstring)."""

    def __init__(self) -> None:
        self._state = _State.HEAD
        self._buffer = b""  # the head, chunk-size line or trailers read so far
        self._left = 0  # body or chunk bytes still to come
        self.heads = 0  # complete header blocks so far

    @property
    def in_head(self) -> bool:
        """Between requests or inside a header block (not in a body)."""
        return self._state is _State.HEAD

    @property
    def head_bytes(self) -> int:
        """Bytes of the current, unfinished header block."""
        return len(self._buffer) if self._state is _State.HEAD else 0

    @property
    def broken(self) -> bool:
        """The stream is not framed as HTTP/1.1 requests (aiohttp will refuse it)."""
        return self._state is _State.BROKEN

    def feed(self, data: bytes) -> bool:
        """Account for ``data``, the next bytes the client sent; True when ``data`` was
        exactly one complete head that announces no body (nothing before or after it)."""
        if self._whole_bodiless_head(data):
            self.heads += 1
            return True
        view = memoryview(data)
        while view and self._state is not _State.BROKEN:
            view = view[self._step(view) :]
        return False

    def _whole_bodiless_head(self, data: bytes) -> bool:
        """The common case, decided without the general walk: ``data`` is exactly one
        complete head that announces no body (a GET or HEAD in one read). Measured on a
        manifest request: 0.3 us against 2.3 us for the walk, on every mirror hit."""
        return (
            self._state is _State.HEAD
            and not self._buffer
            and len(data) <= MAX_HEAD
            and data.endswith(b"\r\n\r\n")
            and data.find(b"\r\n\r\n") == len(data) - 4
            and data[:1] not in (b"\r", b"\n")
            and b"content-length" not in (lowered := data.lower())
            and b"transfer-encoding" not in lowered
        )

    def _step(self, data: memoryview) -> int:
        """Consume from the start of ``data`` in the current state; return bytes used."""
        if self._state in (_State.LENGTH, _State.DATA):
            used = min(self._left, len(data))
            self._left -= used
            if self._left == 0:
                self._state = _State.DATA_END if self._state is _State.DATA else _State.HEAD
            return used
        if self._state is _State.DATA_END:
            return self._line_end(data)
        return self._buffered(data)

    def _line_end(self, data: memoryview) -> int:
        """The CRLF after chunk data (possibly split across reads)."""
        want = b"\r\n"[len(self._buffer) :]
        got = bytes(data[: len(want)])
        if not want.startswith(got):
            self._state = _State.BROKEN
            return len(data)
        self._buffer += got
        if self._buffer == b"\r\n":
            self._buffer = b""
            self._state = _State.SIZE
        return len(got)

    def _buffered(self, data: memoryview) -> int:
        """A head, a chunk-size line or trailers: buffered until its terminator."""
        if self._state is _State.HEAD and not self._buffer:
            blank = 0
            while blank < len(data) and data[blank] in b"\r\n":
                blank += 1
            if blank:  # empty lines before a request line are ignored (RFC 9112 2.2)
                return blank
        terminator = b"\r\n" if self._state is _State.SIZE else b"\r\n\r\n"
        limit = MAX_HEAD if self._state is _State.HEAD else _MAX_LINE
        before = len(self._buffer)
        self._buffer += bytes(data[: limit + len(terminator)])
        end = self._buffer.find(terminator, max(0, before - len(terminator) + 1))
        if end < 0:
            if len(self._buffer) > limit:
                self._state = _State.BROKEN
            return len(data)
        end += len(terminator)
        block, self._buffer = self._buffer[:end], b""
        self._finish(block)
        return end - before  # what follows the terminator is the next state's

    def _finish(self, block: bytes) -> None:
        """A complete head, chunk-size line or trailer block."""
        if self._state is _State.HEAD:
            self.heads += 1
            self._start_body(block)
        elif self._state is _State.SIZE:
            size = block[:-2].split(b";", 1)[0].strip()
            if not size or size.strip(_HEX):
                self._state = _State.BROKEN
            elif int(size, 16):
                self._left, self._state = int(size, 16), _State.DATA
            else:
                # Trailers end at an empty line; the zero chunk's CRLF starts the search,
                # so no trailers at all is the CRLF right after it.
                self._buffer, self._state = b"\r\n", _State.TRAILERS
        else:  # trailers
            self._state = _State.HEAD

    def _start_body(self, head: bytes) -> None:
        lengths: list[bytes] = []
        codings: list[bytes] = []
        for line in head.split(b"\r\n")[1:]:
            name, colon, value = line.partition(b":")
            if not colon:
                continue
            name = name.strip().lower()
            if name == b"content-length":
                lengths.append(value.strip())
            elif name == b"transfer-encoding":
                codings += [c.strip().lower() for c in value.split(b",") if c.strip()]
        if codings:
            chunked = codings[-1] == b"chunked" and not lengths
            self._state = _State.SIZE if chunked else _State.BROKEN
        elif len(lengths) > 1 or (lengths and not lengths[0].isdigit()):
            self._state = _State.BROKEN
        elif lengths and int(lengths[0]):
            self._left = int(lengths[0])
            self._state = _State.LENGTH
