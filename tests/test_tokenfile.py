"""TokenFile: several tokens, constant-time checks, re-read on change (kubelet ..data swap)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from cachesvc.errors import ConfigError
from cachesvc.tokenfile import TokenFile


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


def rewrite(path: Path, text: str) -> None:
    """Write ``text`` with an mtime surely different from the last one."""
    before = path.stat().st_mtime_ns if path.exists() else 0
    path.write_text(text)
    os.utime(path, ns=(before + 10**9, before + 10**9))


def test_lines_first_and_accepts(tmp_path: Path, clock: Clock) -> None:
    path = tmp_path / "token"
    path.write_text("\n  new-token  \n\nold-token\n")
    tokens = TokenFile.load(path, config_key="admin.token_file", clock=clock)
    assert tokens.first() == "new-token"
    assert tokens.accepts("new-token")
    assert tokens.accepts(b"old-token")
    assert not tokens.accepts("new-toke")
    assert not tokens.accepts("")
    assert not tokens.accepts("new-token old-token")


def test_reread_at_most_once_per_interval(tmp_path: Path, clock: Clock) -> None:
    path = tmp_path / "token"
    path.write_text("a\nb\n")
    tokens = TokenFile.load(path, config_key="k", clock=clock, check_interval=5)
    rewrite(path, "b\n")
    clock.now += 4.9
    assert tokens.accepts("a"), "not re-checked before the interval"
    clock.now += 0.1
    assert not tokens.accepts("a"), "the removed token stops working"
    assert tokens.accepts("b")
    assert tokens.first() == "b"


def test_unreadable_or_empty_keeps_last_good(tmp_path: Path, clock: Clock) -> None:
    path = tmp_path / "token"
    path.write_text("good\n")
    tokens = TokenFile.load(path, config_key="k", clock=clock, check_interval=1)
    rewrite(path, "\n  \n")
    clock.now += 1
    assert tokens.accepts("good")
    path.unlink()
    clock.now += 1
    assert tokens.accepts("good")
    os.mkfifo(path)
    clock.now += 1
    assert tokens.accepts("good"), "a FIFO is not read (it would block)"
    path.unlink()
    path.write_bytes(b"x" * (64 * 1024 + 1))
    clock.now += 1
    assert tokens.accepts("good"), "an oversized file is not read"
    rewrite(path, "next\n")
    clock.now += 1
    assert tokens.accepts("next")
    assert not tokens.accepts("good")


def test_kubelet_data_symlink_swap(tmp_path: Path, clock: Clock) -> None:
    """The Secret volume layout: token -> ..data/token, ..data -> ..<timestamp>/."""
    first = tmp_path / "..2026_12_01_00_00_00.1"
    first.mkdir()
    (first / "token").write_text("one\n")
    (tmp_path / "..data").symlink_to(first.name)
    (tmp_path / "token").symlink_to("..data/token")
    tokens = TokenFile.load(tmp_path / "token", config_key="k", clock=clock, check_interval=1)
    assert tokens.accepts("one")

    second = tmp_path / "..2026_12_01_00_01_00.2"
    second.mkdir()
    (second / "token").write_text("two\none\n")
    (tmp_path / "..data_tmp").symlink_to(second.name)
    os.replace(tmp_path / "..data_tmp", tmp_path / "..data")  # kubelet's atomic swap
    (first / "token").unlink()
    first.rmdir()
    clock.now += 1
    assert tokens.first() == "two"
    assert tokens.accepts("one")


@pytest.mark.parametrize("content", [None, "", " \n\n"])
def test_startup_needs_a_token(tmp_path: Path, clock: Clock, content: str | None) -> None:
    path = tmp_path / "token"
    if content is not None:
        path.write_text(content)
    with pytest.raises(ConfigError, match=r"^admin\.token_file: ") as info:
        TokenFile.load(path, config_key="admin.token_file", clock=clock)
    assert "token" in str(info.value)
    assert content is None or "holds no token" in str(info.value)
