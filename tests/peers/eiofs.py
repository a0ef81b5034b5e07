"""A FUSE filesystem that passes through to a directory and fails chosen reads with EIO.

A real read error from the kernel, as a failing disk gives it: device-mapper's ``error``
target is not available here (no /dev/mapper/control), but /dev/fuse is, and mfusepy
(ctypes bindings for libfuse 3, the ``fuse3`` Debian package) serves a filesystem from
Python. ``eio_filesystem(backing, mountpoint, control)`` mounts it; every ``read`` of a
file whose name is a line of ``control`` fails with EIO (``open``, ``stat`` and the
directory still work, as on a disk with bad sectors). FUSE drops a file's page cache on
each ``open``, so a file marked after it was read fails at its next open and read.

Run as a child process (``python -m tests.peers.eiofs BACKING MOUNT CONTROL``) so the
daemon's reads and the filesystem's answers never share one process; stopped by PID
and unmounted with ``fusermount3 -u`` afterwards.
"""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from tests.peers.process import ManagedProcess, start_until_ready

__all__ = ["eio_filesystem"]


@contextmanager
def eio_filesystem(backing: Path, mountpoint: Path, control: Path) -> Iterator[Path]:
    """Mount the pass-through filesystem of ``backing`` at ``mountpoint``; unmounted after."""
    if os.geteuid() != 0 or shutil.which("fusermount3") is None or not Path("/dev/fuse").exists():
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail("EIO tests need root, /dev/fuse and fuse3", pytrace=False)
        pytest.skip("EIO tests need root, /dev/fuse and fuse3 (scripts/install-peers.sh)")
    for directory in (backing, mountpoint):
        directory.mkdir(parents=True, exist_ok=True)
    control.touch()
    argv = [sys.executable, "-m", "tests.peers.eiofs", str(backing), str(mountpoint), str(control)]
    logs = mountpoint.parent
    proc = start_until_ready(
        lambda: ManagedProcess(
            argv, stdout_path=logs / "eiofs.out", stderr_path=logs / "eiofs.err",
            cwd=Path(__file__).resolve().parents[2],
        ),
        lambda: os.path.ismount(mountpoint),
        name="eiofs", timeout=20, error=RuntimeError,
    )  # fmt: skip
    try:
        yield mountpoint
    finally:
        subprocess.run(["fusermount3", "-u", "-z", str(mountpoint)], check=False)
        proc.stop()


def _serve(backing: str, mountpoint: str, control: str) -> None:
    import mfusepy as fuse  # type: ignore[import-untyped]  # no stubs, no py.typed

    class PassThrough(fuse.Operations):  # type: ignore[misc]  # mfusepy is untyped
        """Every call on ``backing``'s file; reads of files named in ``control`` fail."""

        use_ns = True

        def _real(self, path: str) -> str:
            return os.path.join(backing, path.lstrip("/"))

        def _failing(self, path: str) -> bool:
            try:
                names = Path(control).read_text().split()
            except OSError:
                return False
            return os.path.basename(path) in names

        def getattr(self, path: str, fh: Any = None) -> dict[str, Any]:
            st = os.lstat(self._real(path))
            keys = ("st_mode", "st_nlink", "st_uid", "st_gid", "st_size", "st_atime_ns",
                    "st_mtime_ns", "st_ctime_ns")  # fmt: skip
            return {k.replace("_ns", ""): getattr(st, k) for k in keys}

        def readdir(self, path: str, fh: Any) -> list[str]:
            return [".", "..", *os.listdir(self._real(path))]

        def open(self, path: str, flags: int) -> int:
            return os.open(self._real(path), flags & ~os.O_DIRECT)

        def create(self, path: str, mode: int, fi: Any = None) -> int:
            return os.open(self._real(path), os.O_RDWR | os.O_CREAT | os.O_EXCL, mode)

        def read(self, path: str, size: int, offset: int, fh: int) -> bytes:
            if self._failing(path):
                raise fuse.FuseOSError(errno.EIO)
            return os.pread(fh, size, offset)

        def write(self, path: str, data: bytes, offset: int, fh: int) -> int:
            return os.pwrite(fh, data, offset)

        def truncate(self, path: str, length: int, fh: Any = None) -> None:
            os.truncate(self._real(path), length)

        def fsync(self, path: str, datasync: int, fh: int) -> None:
            os.fsync(fh)

        def fsyncdir(self, path: str, datasync: int, fh: Any) -> None:
            return None

        def release(self, path: str, fh: int) -> None:
            os.close(fh)

        def flush(self, path: str, fh: int) -> None:
            return None

        def rename(self, old: str, new: str) -> None:
            os.replace(self._real(old), self._real(new))

        def unlink(self, path: str) -> None:
            os.unlink(self._real(path))

        def mkdir(self, path: str, mode: int) -> None:
            os.mkdir(self._real(path), mode)

        def rmdir(self, path: str) -> None:
            os.rmdir(self._real(path))

        def chmod(self, path: str, mode: int) -> None:
            os.chmod(self._real(path), mode)

        def utimens(self, path: str, times: Any = None) -> None:
            os.utime(self._real(path), ns=times) if times else os.utime(self._real(path))

        def statfs(self, path: str) -> dict[str, int]:
            st = os.statvfs(self._real(path))
            return {k: getattr(st, k) for k in ("f_bavail", "f_bfree", "f_blocks", "f_bsize",
                    "f_favail", "f_ffree", "f_files", "f_flag", "f_frsize", "f_namemax")}  # fmt: skip

    fuse.FUSE(PassThrough(), mountpoint, foreground=True, nothreads=False)


if __name__ == "__main__":
    _serve(*sys.argv[1:4])
