"""The messages of a user's first hour, from real ``cachesvc`` processes: the start-up banner
(only once both listeners are bound; its command runs as printed), port 0 refused, logs as
text on a terminal and JSON elsewhere, ``configuration OK: 1 registry``."""

from __future__ import annotations

import os
import pty
import shlex
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.peers.ports import free_port, refused_url

ROOT = Path(__file__).resolve().parent.parent
CONSOLE_SCRIPT = Path(sys.executable).parent / "cachesvc"  # what `make run` installs


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CACHESVC_")}
    env["PYTHONPATH"] = str(ROOT)
    return env


def _config(tmp_path: Path, listen: str, admin: str, registries: int = 1) -> Path:
    names = ["r.example", "s.example"][:registries]
    lines = [f"listen: '{listen}'", f"admin: {{listen: '{admin}'}}",
             f"storage: {{root: '{tmp_path / 'store'}'}}", "registries:"]  # fmt: skip
    lines += [f"  {n}: {{endpoints: ['{refused_url()}']}}" for n in names]
    path = tmp_path / "my config.yaml"  # a space: the banner must quote it
    path.write_text("\n".join(lines) + "\n")
    return path


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "cachesvc", *args], capture_output=True,
                          text=True, env=_env(), timeout=60, check=False)  # fmt: skip


@contextmanager
def _serving(argv: list[str], *, tty: bool) -> Iterator[tuple[subprocess.Popen[bytes], int]]:
    """``argv`` with stderr on a pseudo-terminal or a pipe; yields (process, read fd)."""
    if tty:
        read_fd, write_fd = pty.openpty()
    else:
        read_fd, write_fd = os.pipe()
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=write_fd, env=_env(), start_new_session=True)  # fmt: skip
    os.close(write_fd)
    try:
        yield proc, read_fd
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
        os.close(read_fd)


def _read_until(fd: int, marker: str, limit: float = 30.0) -> str:
    """Read from ``fd`` until ``marker`` was seen (or the writer went away)."""
    text, deadline = "", time.monotonic() + limit
    while marker not in text and time.monotonic() < deadline:
        try:
            data = os.read(fd, 65536)
        except OSError:  # EIO: the pty's other side closed
            break
        if not data:
            break
        text += data.decode(errors="replace")
    return text


def _connects(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


@pytest.mark.parametrize("how", ["console script", "python -m"])
def test_the_banner_comes_after_binding_and_its_command_runs_as_printed(
    tmp_path: Path, how: str
) -> None:
    mirror, admin = free_port(), free_port()
    config = _config(tmp_path, f"127.0.0.1:{mirror}", f"127.0.0.1:{admin}")
    if how == "console script":
        assert CONSOLE_SCRIPT.exists(), "the venv's cachesvc entry point (pip install -e .)"
        argv = [str(CONSOLE_SCRIPT), "serve", "--config", str(config)]
        exe = str(CONSOLE_SCRIPT)
    else:
        argv = [sys.executable, "-m", "cachesvc", "serve", "--config", str(config)]
        exe = f"{sys.executable} -m cachesvc"
    with _serving(argv, tty=False) as (_, fd):
        text = _read_until(fd, "hosts.toml\n")
        assert "Point containerd at it" in text, text
        assert _connects(mirror)  # bound before the banner said so
        assert _connects(admin)
        assert f"mirror API on http://127.0.0.1:{mirror}, admin on http://127.0.0.1:{admin}" in text
        command = next(line.strip() for line in text.splitlines() if "containerd-config" in line)
        expected = f"{exe} containerd-config --config {shlex.quote(str(config))} --write"
        assert command == expected + " /etc/containerd/certs.d", command
    # copy-paste it (with a directory of our own instead of /etc/containerd/certs.d)
    hosts = tmp_path / "certs.d"
    argv = [*shlex.split(command)[:-1], str(hosts)]
    done = subprocess.run(argv, capture_output=True, text=True, env=_env(), timeout=60,
                          check=False)  # fmt: skip
    assert done.returncode == 0, done.stderr
    toml = (hosts / "r.example" / "hosts.toml").read_text()
    assert f'[host."http://127.0.0.1:{mirror}"]' in toml


def test_no_banner_when_a_listener_cannot_be_bound(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        config = _config(tmp_path, f"127.0.0.1:{free_port()}", f"127.0.0.1:{port}")
        result = _cli("serve", "--config", str(config))
    assert result.returncode == 1
    assert f"cannot listen on 127.0.0.1:{port} (admin.listen)" in result.stderr
    assert "Point containerd" not in result.stderr
    assert "containerd-config" not in result.stderr


@pytest.mark.parametrize("key", ["listen", "admin.listen"])
@pytest.mark.parametrize("command", ["check-config", "serve"])
def test_port_0_is_refused_with_a_reason(tmp_path: Path, key: str, command: str) -> None:
    fixed = f"127.0.0.1:{free_port()}"
    listen, admin = ("127.0.0.1:0", fixed) if key == "listen" else (fixed, "127.0.0.1:0")
    result = _cli(command, "--config", str(_config(tmp_path, listen, admin)))
    assert result.returncode == 2, result
    assert result.stderr.startswith(f"cachesvc: invalid configuration: {key}: port 0 ")
    assert "containerd" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(("count", "words"), [(1, "1 registry (r.example)"),
                                              (2, "2 registries (r.example, s.example)")])  # fmt: skip
def test_check_config_counts_registries_in_words(tmp_path: Path, count: int, words: str) -> None:
    config = _config(tmp_path, "127.0.0.1:5000", "127.0.0.1:5050", registries=count)
    result = _cli("check-config", "--config", str(config))
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"configuration OK: {words}, mirror on 127.0.0.1:5000")


@pytest.mark.parametrize("tty", [True, False])
def test_logs_are_text_on_a_terminal_and_json_elsewhere(tmp_path: Path, tty: bool) -> None:
    config = _config(tmp_path, f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}")
    argv = [sys.executable, "-m", "cachesvc", "serve", "--config", str(config)]
    with _serving(argv, tty=tty) as (proc, fd):
        text = _read_until(fd, "cachesvc listening")
        proc.send_signal(signal.SIGTERM)
        text += _read_until(fd, '"stopped"' if not tty else " stopped")
    line = next(x for x in text.splitlines() if "cachesvc listening" in x)
    if tty:
        assert not line.lstrip().startswith("{"), line
        assert " INFO " in line, line
    else:
        assert line.startswith('{"time":'), line
        assert '"msg":"cachesvc listening"' in line
