"""The argument parser: every subcommand and its flags, nothing run."""

from __future__ import annotations

import argparse

from cachesvc import __version__
from cachesvc.cli.admin import add_admin_commands
from cachesvc.cli.containerd import add_containerd_flags
from cachesvc.cli.verify import add_verify_command


def build_parser() -> argparse.ArgumentParser:
    """``cachesvc``'s parser; each command module adds its own subcommands' flags."""
    parser = argparse.ArgumentParser(
        prog="cachesvc", description="Node-local pull-through cache for container images."
    )
    parser.add_argument("--version", action="version", version=f"cachesvc {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, text in (
        ("serve", "run the mirror daemon"),
        ("check-config", "validate a configuration file and print the result"),
        ("containerd-config", "print (or --write) containerd hosts.toml files for cachesvc"),
    ):
        cmd = sub.add_parser(name, help=text, description=text)
        cmd.add_argument(
            "--config",
            metavar="FILE",
            help="configuration file (default: $CACHESVC_CONFIG, else the embedded default)",
        )
    add_containerd_flags(sub.choices["containerd-config"])
    add_admin_commands(sub)
    add_verify_command(sub)
    return parser
