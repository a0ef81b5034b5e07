"""``cachesvc prewarm``, ``status`` and ``images`` as subprocesses against a daemon:
exit codes, and output on a pseudo-terminal and on a pipe."""

from __future__ import annotations

import asyncio
import os
import pty
import re
import sys
from pathlib import Path

import aiohttp

from cachesvc.app import Daemon
from tests.fakes.registry import FakeRegistry
from tests.operator import add_index, admin_daemon, write_token

ROOT = Path(__file__).resolve().parent.parent
ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CACHESVC_")}
    env["PYTHONPATH"] = str(ROOT)
    return env


async def run_cli(*args: str) -> tuple[int, str, str]:
    """Run ``python -m cachesvc ARGS`` with stdout on a pipe."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "cachesvc", *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=_env(),
    )  # fmt: skip
    async with asyncio.timeout(60):
        out, err = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


def _read_all(fd: int) -> bytes:
    chunks = []
    while True:
        try:
            data = os.read(fd, 65536)
        except OSError:  # EIO: the child closed the terminal
            break
        if not data:
            break
        chunks.append(data)
    return b"".join(chunks)


async def run_cli_on_pty(*args: str) -> tuple[int, str]:
    """Run ``python -m cachesvc ARGS`` with stdout on a pseudo-terminal."""
    master, slave = pty.openpty()
    try:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "cachesvc", *args,
            stdout=slave, stderr=slave, stdin=asyncio.subprocess.DEVNULL, env=_env(),
        )  # fmt: skip
        os.close(slave)
        slave = -1
        reader = asyncio.get_running_loop().run_in_executor(None, _read_all, master)
        async with asyncio.timeout(60):
            code = await proc.wait()
            output = await reader
    finally:
        if slave >= 0:
            os.close(slave)
        os.close(master)
    return code, output.decode(errors="replace")


def admin_args(daemon: Daemon, token_file: Path) -> list[str]:
    return ["--admin", daemon.admin_url, "--token-file", str(token_file)]


async def test_prewarm_on_a_terminal_draws_bars_and_exits_0(
    fake: FakeRegistry, storage: Path, tmp_path: Path
) -> None:
    add_index(fake, "team/app", "1", {"linux/amd64": [2_000_000, 500_000]})
    fake.faults.slow_chunk_delay = 0.01
    token = write_token(tmp_path / "token")
    async with admin_daemon(storage, fake, token) as daemon:
        code, output = await run_cli_on_pty(
            "prewarm", "fake.test/team/app:1", "--platform", "linux/amd64",
            *admin_args(daemon, token),
        )  # fmt: skip
    assert code == 0, output
    assert "\x1b[" in output  # redrawn in place
    text = ANSI.sub("", output)
    assert re.search(r"fake\.test/team/app:1\s+\[#{24}\]\s+100%", text), text
    assert re.search(r"overall\s+\[#{24}\] 100% ", text), text
    assert "1 of 1 images done" in text


async def test_prewarm_on_a_pipe_prints_plain_lines_and_fails_with_a_summary(
    fake: FakeRegistry, storage: Path, tmp_path: Path
) -> None:
    fake.add_image("team/ok", "1", [os.urandom(10_000)])
    token = write_token(tmp_path / "token")
    refs = tmp_path / "refs.txt"
    refs.write_text("# rollout 42\nfake.test/team/ok:1\n\nfake.test/team/missing:1\n")
    async with admin_daemon(storage, fake, token) as daemon:
        code, out, err = await run_cli(
            "prewarm", "--file", str(refs), "--platform", "linux/amd64",
            *admin_args(daemon, token),
        )  # fmt: skip
        assert code == 1, (out, err)
        assert "\x1b[" not in out
        assert "fake.test/team/ok:1: done" in out
        assert "fake.test/team/missing:1: failed: " in out
        assert "1 of 2 images done" in out
        assert re.search(r"^  fake\.test/team/missing:1: .*not found", out, re.M), out

        code, out, err = await run_cli("prewarm", "fake.test/team/ok:1",
                                       *admin_args(daemon, tmp_path / "nope"))  # fmt: skip
        assert code == 3
        assert "token" in err
        write_token(tmp_path / "wrong", "not-the-token")
        code, out, err = await run_cli("prewarm", "fake.test/team/ok:1",
                                       *admin_args(daemon, tmp_path / "wrong"))  # fmt: skip
        assert code == 3
        assert "401" in err
        code, out, err = await run_cli("prewarm", *admin_args(daemon, token))
        assert code == 2
        assert "at least one image" in err
        code, out, err = await run_cli("prewarm", "UPPER/Case:1", *admin_args(daemon, token))
        assert code == 2
        assert "invalid image references" in err

        code, out, err = await run_cli("images", *admin_args(daemon, token))
        assert code == 0, err
        header, row, total = out.splitlines()
        assert header.split()[:3] == ["REGISTRY", "REPOSITORY", "TAGS"]
        assert row.split()[:3] == ["fake.test", "team/ok", "1"]
        assert total.startswith("1 images")

        code, out, err = await run_cli("status", "--admin", daemon.admin_url)
        assert code == 0, err
        assert out.startswith(f"cachesvc at {daemon.admin_url}: ready")
        assert "hit ratio:" in out
        assert "cache:" in out
        assert "fills in flight: 0" in out
        assert f"fake.test            {fake.url}" in out
        assert "healthy" in out
    code, out, err = await run_cli("status", "--admin", "http://127.0.0.1:9")
    assert code == 3
    assert "cannot reach" in err


async def test_status_of_a_daemon_that_is_not_ready_exits_1(
    fake: FakeRegistry, storage: Path, tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    async with admin_daemon(storage, fake, None) as daemon:
        daemon._ready["ready"] = False  # as during shutdown
        code, out, _ = await run_cli("status", "--admin", daemon.admin_url)
        daemon._ready["ready"] = True
    assert code == 1
    assert ": starting" in out
