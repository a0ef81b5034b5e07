"""``--before REV``: an older cachesvc, exported from git into a temp dir, to run beside today's.

Before/after on this shared 2-core machine is only meaningful inside one run, interleaved, as
ratios: two separate runs differ by more than most changes do. So the harness exports the
revision's tree with ``git archive`` (no worktree: nothing is registered in the repository that
other checkouts share) and runs ``python -m cachesvc`` from it with the same venv, PYTHONPATH
and working directory pointing at the export. The export is removed when the run ends.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

GIT_TIMEOUT_SECONDS = 60


class RevisionError(RuntimeError):
    """The revision could not be resolved or exported, or its cachesvc is not importable."""


@dataclass(frozen=True, slots=True)
class Revision:
    """An exported tree of one commit."""

    commit: str
    """The full commit id."""
    subject: str
    """``<short id> <subject line>``, for the report header."""
    root: Path
    """The exported tree: ``root / "cachesvc"`` is that commit's package."""


def _git(repo: Path, *args: str) -> bytes:
    try:
        result = subprocess.run(
            ["git", "-C", str(repo), *args],
            capture_output=True,
            timeout=GIT_TIMEOUT_SECONDS,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise RevisionError(f"git {args[0]}: {exc}") from exc
    if result.returncode != 0:
        message = result.stderr.decode(errors="replace").strip()
        raise RevisionError(f"git {' '.join(args)}: {message}")
    return result.stdout


@contextlib.contextmanager
def exported(repo: Path, rev: str) -> Iterator[Revision]:
    """Export ``rev`` of ``repo`` into a temp dir; check its cachesvc imports from there.

    The temp dir is removed on exit, whatever happened.
    """
    commit = _git(repo, "rev-parse", "--verify", f"{rev}^{{commit}}").decode().strip()
    subject = _git(repo, "log", "-1", "--format=%h %s", commit).decode().strip()
    root = Path(tempfile.mkdtemp(prefix="cachesvc-before-"))
    try:
        archive = root / "tree.tar"
        archive.write_bytes(_git(repo, "archive", "--format=tar", commit))
        with tarfile.open(archive) as tar:
            tar.extractall(root / "tree", filter="data")
        archive.unlink()
        revision = Revision(commit, subject, root / "tree")
        _check_import(revision)
        yield revision
    finally:
        shutil.rmtree(root, ignore_errors=True)


def python_env(source_root: Path) -> dict[str, str]:
    """The environment that makes ``python -m cachesvc`` import the package under ``source_root``.

    PYTHONPATH comes before site-packages, so it wins over the venv's editable install of
    the current checkout.
    """
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(source_root), env.get("PYTHONPATH")]))
    return env


def _check_import(revision: Revision) -> None:
    """Fail early, and clearly, if ``cachesvc`` would not be the exported one."""
    try:
        result = subprocess.run(
            [sys.executable, "-c", "import cachesvc; print(cachesvc.__file__)"],
            capture_output=True,
            timeout=GIT_TIMEOUT_SECONDS,
            cwd=revision.root,
            env=python_env(revision.root),
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise RevisionError(f"cannot import cachesvc from {revision.subject}: {exc}") from exc
    where = Path(result.stdout.decode().strip() or ".")
    if result.returncode != 0 or not where.resolve().is_relative_to(revision.root.resolve()):
        detail = result.stderr.decode(errors="replace").strip().splitlines()
        raise RevisionError(
            f"cachesvc of {revision.subject} does not import from its export "
            f"({where}; {detail[-1] if detail else 'no error'})"
        )
