"""A small filesystem for disk-full tests: a tmpfs mounted with ``size=`` (needs root).

Read errors (EIO) come from a FUSE layer instead: ``tests.peers.eiofs``.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

__all__ = ["small_filesystem"]


@contextmanager
def small_filesystem(mountpoint: Path, size: str) -> Iterator[Path]:
    """Mount a tmpfs of ``size`` (e.g. ``"512k"``) at ``mountpoint``; unmounted afterwards."""
    if os.geteuid() != 0:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail("disk-full tests need root (mount -t tmpfs)", pytrace=False)
        pytest.skip("disk-full tests need root (mount -t tmpfs)")
    mountpoint.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(mountpoint)],
        check=True,
    )
    try:
        yield mountpoint
    finally:
        subprocess.run(["umount", "-l", str(mountpoint)], check=False)


def fill(root: Path) -> None:
    """Fill the filesystem under ``root`` to the last byte."""
    for name, chunk in (("filler", 65536), ("filler-small", 512)):
        try:
            with (root / name).open("wb") as f:
                while True:
                    f.write(b"\0" * chunk)
                    f.flush()
        except OSError:
            pass  # ENOSPC: full, as wanted
