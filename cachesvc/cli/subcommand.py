"""What every command module shares: the subparsers it adds to, the usage exit status."""

from __future__ import annotations

import argparse
from typing import Protocol

# argparse exits 2 on bad usage; usage errors found after parsing exit the same way.
EXIT_USAGE = 2


class Subcommands(Protocol):
    """What ``add_subparsers`` returns, as far as the CLI uses it (argparse documents
    the object's ``add_parser`` method but not its class, which is private)."""

    def add_parser(
        self, name: str, *, help: str | None = ..., description: str | None = ...
    ) -> argparse.ArgumentParser:
        """A parser for subcommand ``name``."""
        ...
