"""``RequestFrames``: where header blocks start and end in a client's byte stream, however
the bytes are split across reads (the header deadline of every listener depends on it)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from cachesvc.server.requestframe import MAX_HEAD, RequestFrames

PIPELINED = (
    b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"
    b"POST /a HTTP/1.1\r\ncontent-length: 5\r\n\r\nhe\r\n\r"
    b"POST /b HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"5;x=1\r\n\r\n\r\n\r\r\n3\r\nabc\r\n0\r\nX-T: 1\r\n\r\n"
    b"POST /c HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n"
    b"\r\nGET /d HTTP/1.1\r\n\r\n"
    b"GET /e HT"
)


def _fed(stream: bytes, cuts: list[int]) -> RequestFrames:
    frames = RequestFrames()
    start = 0
    for cut in [*sorted(cuts), len(stream)]:
        frames.feed(stream[start:cut])
        start = cut
    return frames


@given(st.lists(st.integers(0, len(PIPELINED)), max_size=40))
def test_heads_are_found_however_the_stream_is_split(cuts: list[int]) -> None:
    """Bodies that contain CRLF CRLF are bodies; the last, unfinished head is 9 bytes."""
    frames = _fed(PIPELINED, cuts)
    assert (frames.heads, frames.in_head, frames.head_bytes, frames.broken) == (5, True, 9, False)


def test_inside_a_body_is_not_inside_a_head() -> None:
    frames = _fed(b"POST / HTTP/1.1\r\nContent-Length: 10\r\n\r\nabc", [])
    assert (frames.heads, frames.in_head, frames.head_bytes) == (1, False, 0)


def test_between_requests_no_head_has_begun() -> None:
    frames = _fed(b"GET / HTTP/1.1\r\n\r\n\r\n", [])
    assert (frames.heads, frames.in_head, frames.head_bytes) == (1, True, 0)


def test_framing_aiohttp_refuses_is_broken() -> None:
    for stream in (
        b"POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\n",
        b"POST / HTTP/1.1\r\nContent-Length: -1\r\n\r\n",
        b"POST / HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n",
        b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n",
        b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0x1\r\n",
        b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n1\r\nabXX",
        b"GET / HTTP/1.1\r\nX: " + b"a" * MAX_HEAD,
    ):
        assert _fed(stream, []).broken, stream[:60]
