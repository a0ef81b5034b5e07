"""A private containerd (own root, state and socket under a temp dir) driven with ``ctr``."""

from __future__ import annotations

import asyncio
import os
import shutil
import time
from pathlib import Path

from benchmarks.processes import Child, ChildError, run_command

NAMESPACE = "bench"
READY_SECONDS = 20.0
DISABLED_PLUGINS = [
    "io.containerd.grpc.v1.cri",
    "io.containerd.snapshotter.v1.btrfs",
    "io.containerd.snapshotter.v1.zfs",
    "io.containerd.snapshotter.v1.devmapper",
    "io.containerd.snapshotter.v1.aufs",
]


def containerd_unavailable_reason() -> str | None:
    """None when a private containerd can be run here, otherwise why not."""
    for binary in ("containerd", "ctr"):
        if shutil.which(binary) is None:
            return f"{binary} not installed"
    if os.geteuid() != 0:
        return "containerd needs root"
    return None


class Containerd:
    """One containerd daemon with a content store of its own (so every start is cold)."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.address = str(workdir / "containerd.sock")
        config = workdir / "config.toml"
        plugins = ", ".join(f'"{p}"' for p in DISABLED_PLUGINS)
        config.write_text(
            "\n".join(
                [
                    "version = 2",
                    f'root = "{workdir / "root"}"',
                    f'state = "{workdir / "state"}"',
                    f"disabled_plugins = [{plugins}]",
                    "[grpc]",
                    f'  address = "{self.address}"',
                    "[ttrpc]",
                    f'  address = "{workdir / "containerd-ttrpc.sock"}"',
                    "",
                ]
            )
        )
        self.child = Child(
            "containerd", ["containerd", "--config", str(config)], workdir / "containerd.log"
        )

    async def wait_ready(self) -> None:
        """Poll ``ctr version`` until the daemon answers (for at most READY_SECONDS)."""
        deadline = time.monotonic() + READY_SECONDS
        while time.monotonic() < deadline:
            if not self.child.running():
                raise ChildError(f"containerd exited:\n{self.child.log_tail()}")
            code, _ = await run_command(["ctr", "--address", self.address, "version"])
            if code == 0:
                return
            await asyncio.sleep(0.1)
        raise ChildError(f"containerd not ready:\n{self.child.log_tail()}")

    async def fetch_seconds(self, reference: str) -> float:
        """Time ``ctr content fetch --plain-http reference``; raise ChildError on failure."""
        started = time.perf_counter()
        code, output = await run_command(
            [
                "ctr",
                "--address",
                self.address,
                "--namespace",
                NAMESPACE,
                "content",
                "fetch",
                "--plain-http",
                reference,
            ]
        )
        elapsed = time.perf_counter() - started
        if code != 0:
            raise ChildError(f"ctr content fetch {reference} failed ({code}): {output[-2000:]}")
        return elapsed

    def stop(self) -> None:
        """Stop the daemon and delete its content store."""
        try:
            self.child.stop()
        finally:
            shutil.rmtree(self.workdir, ignore_errors=True)
