"""``cachesvc verify``: hash every stored file against its digest, without the daemon."""

from __future__ import annotations

import argparse
import sys

from cachesvc.cli.subcommand import Subcommands
from cachesvc.config import Config


def add_verify_command(sub: Subcommands) -> None:
    """The ``verify`` subcommand and its flags."""
    verify = sub.add_parser(
        "verify",
        help="check every stored file against its digest",
        description="Hash every file under storage.root/blobs against its name, without "
        "the daemon (safe while it runs). Prints each damaged file; exit 1 if any.",
    )
    verify.add_argument("--config", metavar="FILE", help="configuration file (storage.root)")
    verify.add_argument(
        "--remove", action="store_true", help="delete damaged files (fetched again when asked)"
    )
    verify.add_argument("--rate", metavar="SIZE", help="read at most SIZE per second (e.g. 50MiB)")


def run_verify_command(args: argparse.Namespace, config: Config) -> int:
    """Run ``verify``; its exit status."""
    # Imported here: the other commands need not load the store to start.
    from cachesvc.config.values import parse_size
    from cachesvc.ops.storecheck import run_verify

    rate = parse_size(args.rate, "--rate") if args.rate else None
    return run_verify(config.storage.root, sys.stdout, sys.stderr, remove=args.remove, rate=rate)
