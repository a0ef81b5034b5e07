"""A child process whose output goes to log files and which is always stopped.

Peers run in their own session (process group), so stopping them also stops anything they
spawned. Stopping is SIGTERM, then SIGKILL after a grace period.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import IO, Self

__all__ = ["ManagedProcess", "StartStop", "start_until_ready", "tail"]


def tail(path: Path, max_bytes: int = 4000) -> str:
    """Return the last ``max_bytes`` of a log file as text ('' when it does not exist)."""
    try:
        with path.open("rb") as f:
            size = f.seek(0, os.SEEK_END)
            f.seek(max(0, size - max_bytes))
            return f.read().decode("utf-8", "replace")
    except FileNotFoundError:
        return ""


class StartStop:
    """A context manager that calls ``start()`` on entry and ``stop()`` on exit."""

    def start(self) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def start_until_ready(
    launch: Callable[[], ManagedProcess],
    ready: Callable[[], bool],
    *,
    name: str,
    timeout: float,
    error: type[Exception],
    attempts: int = 1,
    interval: float = 0.02,
) -> ManagedProcess:
    """Start ``launch()`` and poll ``ready()`` until it is true; return the running process.

    ``launch`` builds a not yet started process (choosing ports and writing its config, so each
    attempt gets fresh ports). ``error`` (carrying :meth:`ManagedProcess.describe`) is raised
    when the process exits or is not ready after ``timeout`` seconds; a process whose log says
    "address already in use" (a port taken between choosing and binding) is retried, up to
    ``attempts`` starts in all. Whatever goes wrong, a process that is not returned is stopped.
    """
    for attempt in range(attempts):
        proc = launch()
        proc.start()
        try:
            deadline = time.monotonic() + timeout
            while True:
                if proc.returncode() is not None:
                    raise error(f"{name} exited during start-up\n{proc.describe()}")
                if ready():
                    return proc
                if time.monotonic() >= deadline:
                    raise error(f"{name} not ready after {timeout}s\n{proc.describe()}")
                time.sleep(interval)
        except error:
            in_use = "address already in use" in proc.describe().lower()
            proc.stop()
            if not in_use or attempt == attempts - 1:
                raise
        except BaseException:
            proc.stop()
            raise
    raise ValueError(f"attempts must be at least 1, not {attempts}")


class ManagedProcess(StartStop):
    """``argv`` started with stdout and stderr appended to files; a context manager."""

    def __init__(
        self,
        argv: Sequence[str],
        *,
        stdout_path: Path,
        stderr_path: Path,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
    ) -> None:
        self.argv = tuple(argv)
        self.stdout_path = stdout_path
        self.stderr_path = stderr_path
        self._env = dict(env) if env is not None else None
        self._cwd = cwd
        self._proc: subprocess.Popen[bytes] | None = None
        self._files: list[IO[bytes]] = []

    @property
    def pid(self) -> int:
        """The process id (the process must have been started)."""
        if self._proc is None:
            raise RuntimeError("process not started")
        return self._proc.pid

    def start(self) -> None:
        """Start the process; it runs in a new session."""
        if self._proc is not None:
            raise RuntimeError("process already started")
        out = self.stdout_path.open("ab")
        err = self.stderr_path.open("ab")
        self._files = [out, err]
        try:
            self._proc = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                env=self._env,
                cwd=self._cwd,
                start_new_session=True,
            )
        except BaseException:
            self._close_files()
            raise

    def returncode(self) -> int | None:
        """None while running, else the exit status."""
        return None if self._proc is None else self._proc.poll()

    def stop(self, grace: float = 5.0) -> None:
        """SIGTERM the process group, SIGKILL it after ``grace`` seconds; idempotent."""
        proc = self._proc
        if proc is None:
            return
        try:
            if proc.poll() is None:
                self._signal_group(proc.pid, signal.SIGTERM)
                try:
                    proc.wait(timeout=grace)
                except subprocess.TimeoutExpired:
                    self._signal_group(proc.pid, signal.SIGKILL)
                    proc.wait(timeout=10)
            # Children left in the group (if any) go too.
            self._signal_group(proc.pid, signal.SIGKILL)
        finally:
            self._proc = None
            self._close_files()

    def describe(self) -> str:
        """The command line, exit status and the tails of both logs, for error messages."""
        return (
            f"command: {' '.join(self.argv)}\nexit status: {self.returncode()}\n"
            f"--- stderr ({self.stderr_path}) ---\n{tail(self.stderr_path)}\n"
            f"--- stdout ({self.stdout_path}) ---\n{tail(self.stdout_path)}"
        )

    @staticmethod
    def _signal_group(pgid: int, sig: signal.Signals) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, sig)

    def _close_files(self) -> None:
        for f in self._files:
            f.close()
        self._files = []
