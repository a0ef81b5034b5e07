"""The absorber: every byte fed is hashed and lands in the file, in order, whatever the
chunking; O_DIRECT where the filesystem takes it, buffered otherwise; failures surface."""

from __future__ import annotations

import errno
import hashlib
import os
from pathlib import Path

import pytest

from cachesvc.mirror.heap import release_free_memory
from cachesvc.store import lanes as ingest
from cachesvc.store.lanes import ALIGN, STAGE_BYTES, Absorber, BlobWriter

SIZES = [1, ALIGN - 1, ALIGN, ALIGN + 1, STAGE_BYTES - 1, STAGE_BYTES, 3 * STAGE_BYTES + 12345]


def takes_o_direct(directory: Path) -> bool:
    """Whether the filesystem under ``directory`` accepts O_DIRECT (probed independently)."""
    probe = directory / "probe"
    try:
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_DIRECT, 0o600)
    except OSError as exc:
        if exc.errno != errno.EINVAL:
            raise
        return False
    os.close(fd)
    probe.unlink()
    return True


async def absorb(path: Path, data: bytes, chunk: int, *, direct: bool = True) -> list[int]:
    """Feed ``data`` in ``chunk``-sized pieces; returns every ``written`` reported."""
    reported: list[int] = []
    absorber = Absorber(path, hashlib.sha256(), reported.append, direct=direct)
    try:
        for at in range(0, len(data), chunk):
            await absorber.feed(data[at : at + chunk])
        await absorber.end()
        assert absorber.hexdigest() == hashlib.sha256(data).hexdigest()
        assert absorber.written == len(data)
        if direct:
            assert absorber.direct == takes_o_direct(path.parent)
        else:
            assert not absorber.direct
    finally:
        await absorber.close()
    return reported


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("direct", [True, False])
async def test_every_byte_lands_in_order_and_is_hashed(
    size: int, direct: bool, tmp_path: Path
) -> None:
    data = os.urandom(size)
    for chunk in (7, 65536, 256 * 1024 + 3):
        path = tmp_path / f"blob-{chunk}"
        reported = await absorb(path, data, chunk, direct=direct)
        assert path.read_bytes() == data
        assert reported == sorted(reported)
        assert reported[-1] == size


async def test_a_fill_cut_midway_closes_cleanly_and_gives_the_stages_back(tmp_path: Path) -> None:
    absorber = Absorber(tmp_path / "cut", hashlib.sha256(), lambda _: None)
    stages = list(absorber._stages)
    await absorber.feed(os.urandom(STAGE_BYTES + 5000))  # one stage in the lanes, one filling
    await absorber.close()
    await absorber.close()  # twice is harmless
    assert absorber.writer.fd == -1
    # Every stage went back to the pool, or was unmapped where the pool was full.
    assert all(any(s is p for p in ingest._pool) or s.closed for s in stages)


async def test_a_write_error_surfaces_and_close_still_works(tmp_path: Path) -> None:
    path = tmp_path / "broken"
    absorber = Absorber(path, hashlib.sha256(), lambda _: None)
    # The disk turns read-only under the writer: its next write fails with EBADF.
    read_only = os.open(path, os.O_RDONLY)
    os.dup2(read_only, absorber.writer.fd)
    os.close(read_only)
    try:
        with pytest.raises(OSError, match="Bad file descriptor"):
            for _ in range(ingest.STAGES_PER_FILL + 2):
                await absorber.feed(os.urandom(STAGE_BYTES))
            await absorber.end()
    finally:
        await absorber.close()
    assert absorber.writer.fd == -1


def test_a_device_refusing_the_alignment_falls_back_to_buffered_writes(tmp_path: Path) -> None:
    writer = BlobWriter(tmp_path / "blob")
    if not writer.direct:
        writer.close()
        pytest.fail("this test needs a filesystem that takes O_DIRECT (ext4, xfs) under tmp")
    # A buffer one byte off a page boundary: O_DIRECT refuses it with EINVAL, as a device
    # with a larger logical block than ALIGN would refuse an aligned one.
    data = memoryview(bytearray(os.urandom(3 * ALIGN + 1)))[1:]
    try:
        writer.write(data)
    finally:
        writer.close()
    assert not writer.direct
    assert (tmp_path / "blob").read_bytes() == bytes(data)


def test_free_heap_memory_can_be_given_back_on_glibc() -> None:
    # Debian (this project's machines and its image) is glibc: malloc_trim is there.
    assert release_free_memory() is True
