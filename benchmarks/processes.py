"""Child processes: start with a log file, wait until an HTTP endpoint answers, always stop."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path

STOP_GRACE_SECONDS = 5.0


class ChildError(RuntimeError):
    """A child process could not be started or never became ready."""


class Child:
    """One child process whose stdout and stderr go to a log file."""

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        log_path: Path,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
    ) -> None:
        self.name = name
        self.argv = list(argv)
        self.log_path = log_path
        self._log = log_path.open("wb")
        try:
            self._proc = subprocess.Popen(
                self.argv,
                stdout=self._log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=dict(env) if env is not None else None,
                cwd=cwd,
                start_new_session=True,
            )
        except OSError as exc:
            self._log.close()
            raise ChildError(f"{name}: cannot start {self.argv[0]}: {exc}") from exc

    @property
    def pid(self) -> int:
        """The operating-system process id."""
        return self._proc.pid

    def running(self) -> bool:
        """True while the process has not exited."""
        return self._proc.poll() is None

    def log_tail(self, limit: int = 2000) -> str:
        """The last ``limit`` characters of the child's log, for error messages."""
        self._log.flush()
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return text[-limit:]

    def wait_http(self, url: str, timeout: float = 20.0, ok_status: int = 200) -> None:
        """Poll ``url`` until it answers ``ok_status``; raise ChildError on exit or timeout."""
        deadline = time.monotonic() + timeout
        last_error = "no attempt"
        while time.monotonic() < deadline:
            if not self.running():
                raise ChildError(
                    f"{self.name} exited with {self._proc.returncode}:\n{self.log_tail()}"
                )
            try:
                with urllib.request.urlopen(url, timeout=2.0) as response:  # noqa: S310 -- loopback URLs built by the harness
                    if response.status == ok_status:
                        return
                    last_error = f"status {response.status}"
            except urllib.error.HTTPError as exc:
                if exc.code == ok_status:
                    return
                last_error = f"status {exc.code}"
            except OSError as exc:
                last_error = str(exc)
            time.sleep(0.02)
        raise ChildError(f"{self.name} not ready at {url} ({last_error}):\n{self.log_tail()}")

    def stop(self) -> None:
        """SIGTERM the child's process group, then SIGKILL after a grace period."""
        try:
            if self.running():
                self._signal(signal.SIGTERM)
                try:
                    self._proc.wait(timeout=STOP_GRACE_SECONDS)
                except subprocess.TimeoutExpired:
                    self._signal(signal.SIGKILL)
                    self._proc.wait(timeout=STOP_GRACE_SECONDS)
        finally:
            self._log.close()

    def _signal(self, sig: signal.Signals) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self._proc.pid, sig)


async def run_command(argv: Sequence[str]) -> tuple[int, str]:
    """Run a command, return (exit code, combined output).

    Callers bound it with ``asyncio.timeout``; on cancellation the command is killed.
    """
    proc = await asyncio.create_subprocess_exec(
        *argv,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        stdin=asyncio.subprocess.DEVNULL,
    )
    try:
        out, _ = await proc.communicate()
    except BaseException:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        raise
    return proc.returncode if proc.returncode is not None else -1, out.decode(errors="replace")
