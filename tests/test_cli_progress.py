"""Prewarm progress against a daemon: no bar pretends to know a size while an image is being
resolved, blobs that were cached say so, and a failure names its reference once."""

from __future__ import annotations

import os
import re
from pathlib import Path

from tests.fakes.registry import FakeRegistry
from tests.operator import admin_daemon, write_token
from tests.test_cli_admin import ANSI, admin_args, run_cli, run_cli_on_pty

FULL = "[" + "#" * 24 + "]"


def _frames(output: str) -> list[str]:
    """The redrawn blocks of a terminal run, ANSI removed (each ends with the overall line)."""
    frames, current = [], []
    for line in ANSI.sub("", output.replace("\x1b[2K", "\n")).splitlines():
        if line.strip():
            current.append(line)
        if line.startswith("overall"):
            frames.append("\n".join(current))
            current = []
    return frames


async def test_a_terminal_shows_resolving_not_a_full_bar_until_sizes_are_known(
    fake: FakeRegistry, storage: Path, tmp_path: Path
) -> None:
    fake.add_image("team/app", "1", [os.urandom(50_000)])
    fake.faults.manifest_delay = 0.8  # the CLI's first polls see the image resolving
    token = write_token(tmp_path / "token")
    async with admin_daemon(storage, fake, token) as daemon:
        code, output = await run_cli_on_pty("prewarm", "fake.test/team/app:1",
                                            *admin_args(daemon, token))  # fmt: skip
    assert code == 0, output
    frames = _frames(output)
    resolving = [f for f in frames if "resolving" in f]
    assert resolving, frames
    for frame in resolving:
        assert FULL not in frame, frame
        assert "100%" not in frame, frame
        assert re.search(r"^overall\s+\[\s+resolving…\s+\] resolving 1 of 1 images", frame, re.M)
    assert re.search(rf"fake\.test/team/app:1\s+\{FULL[:-1]}\]\s+100%", frames[-1]), frames[-1]


async def test_already_cached_blobs_say_so_and_a_failure_names_its_reference_once(
    fake: FakeRegistry, storage: Path, tmp_path: Path
) -> None:
    fake.add_image("team/app", "1", [os.urandom(10_000), os.urandom(20_000)])
    fake.faults.manifest_delay = 1.0
    token = write_token(tmp_path / "token")
    async with admin_daemon(storage, fake, token) as daemon:
        admin = admin_args(daemon, token)
        code, out, err = await run_cli("prewarm", "fake.test/team/app:1", *admin)
        assert code == 0, (out, err)
        assert "progress: resolving 1 of 1 images, 0 B so far" in out
        assert "100% 0 B/0 B" not in out
        assert "already cached" not in out
        code, out, err = await run_cli("prewarm", "fake.test/team/app:1",
                                       "fake.test/team/missing:1", *admin)  # fmt: skip
        assert code == 1, (out, err)
        assert re.search(r"^fake\.test/team/app:1: done \(29\.\d KiB, all 3 blobs already "
                         r"cached\)$", out, re.M), out  # fmt: skip
        failures = [line for line in out.splitlines() if "team/missing" in line]
        assert failures, out
        for line in failures:
            assert line.count("fake.test/team/missing:1") == 1, line
        assert "fake.test/team/missing:1: failed: not found" in failures
        assert "  fake.test/team/missing:1: not found" in failures
        code, output = await run_cli_on_pty("prewarm", "fake.test/team/app:1", *admin)
    assert code == 0, output
    assert "done (all 3 blobs already cached)" in ANSI.sub("", output)
