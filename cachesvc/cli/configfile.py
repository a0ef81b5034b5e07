"""Which configuration a command runs with: --config, $CACHESVC_CONFIG, or the default."""

from __future__ import annotations

import argparse
import os
from dataclasses import replace
from pathlib import Path

from cachesvc.config import Config, default_config, load_config


def config_path(args: argparse.Namespace) -> str | None:
    """The configuration file named by ``--config`` or ``$CACHESVC_CONFIG``, if any."""
    path: str | None = args.config or os.environ.get("CACHESVC_CONFIG")
    return path


def load_for(args: argparse.Namespace) -> Config:
    """The configuration file's, else the embedded default (data beside the working
    directory when the default storage root is not writable)."""
    path = config_path(args)
    if path:
        return load_config(Path(path))
    config = default_config()
    root = config.storage.root
    if not _writable(root):
        # The embedded default on a workstation: keep data beside the working directory.
        fallback = Path.cwd() / "data"
        config = replace(config, storage=replace(config.storage, root=fallback))
    return config


def _writable(path: Path) -> bool:
    probe = path
    while not probe.exists():
        if probe.parent == probe:
            return False
        probe = probe.parent
    return os.access(probe, os.W_OK)
