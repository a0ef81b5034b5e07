"""``store.chunks.read_chunks`` and the fill's ``FileSpan.read`` on top of it."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from cachesvc.mirror.fill import FileSpan, FillFailed
from cachesvc.store.chunks import read_chunks


async def test_a_span_comes_in_chunks_of_at_most_the_limit(tmp_path: Path) -> None:
    data = os.urandom(10_000)
    (tmp_path / "f").write_bytes(data)
    fd = os.open(tmp_path / "f", os.O_RDONLY)
    try:
        got = [c async for c in read_chunks(fd, 100, 9_000, 4096)]
    finally:
        os.close(fd)
    assert [len(c) for c in got] == [4096, 4096, 808]
    assert b"".join(got) == data[100:9_100]


async def test_a_file_shorter_than_the_span_is_eio_and_a_short_temp_file_fails_the_fill(
    tmp_path: Path,
) -> None:
    (tmp_path / "f").write_bytes(b"x" * 1000)
    fd = os.open(tmp_path / "f", os.O_RDONLY)
    try:
        with pytest.raises(OSError, match="shorter") as short:
            _ = [c async for c in read_chunks(fd, 0, 2000, 512)]
        assert short.value.errno == errno.EIO
        with pytest.raises(FillFailed):
            _ = [c async for c in FileSpan(fd, 500, 1000).read(limit=256)]
    finally:
        os.close(fd)
