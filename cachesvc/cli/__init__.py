"""The command line; the only place that reads argv and the environment.

cachesvc serve [--config FILE]             run the daemon (CACHESVC_CONFIG works too)
cachesvc check-config [--config FILE]      validate a configuration and print it
cachesvc containerd-config [--write [DIR]] [--containerd-config F --host-root R]
                  [--containerd-version X.Y] [--write-config-path] [--uninstall]
                                           print or write hosts.toml for every registry,
                                           into the directory containerd is found to read
cachesvc prewarm REF... [--file F] [--platform P ...] [--pin] [--admin URL] [--token-file F]
                                           prewarm images with progress; exit 0 only if all did
                 [--cluster]               on every cluster member (one job, a bar per member)
cachesvc status [--admin URL]              health summary from /metrics and /readyz
cachesvc images [--registry R] [--repository R] [--pinned] [--json]
                                           the inventory as a table
cachesvc purge REF...                      remove images and the blobs only they use
cachesvc pins / unpin REF...               the pin list; unpin images
cachesvc jobs [ID] / cancel ID             prewarm jobs; cancel one
cachesvc verify [--config FILE] [--remove] [--rate SIZE]
                                           hash every stored file; exit 1 on damage

One module per command (group): serve.py (serve, check-config), containerd.py,
admin.py (the commands that talk to the admin API; its docstring says where the URL
and token come from), verify.py; parser.py puts their flags together and
configfile.py picks the configuration. This module dispatches and maps errors to
exit statuses.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from dataclasses import replace

from cachesvc.cli.admin import ADMIN_COMMANDS, run_admin_command
from cachesvc.cli.configfile import config_path, load_for
from cachesvc.cli.containerd import run_containerd_config
from cachesvc.cli.parser import build_parser
from cachesvc.cli.serve import refuse_port_zero, run_check_config, run_serve
from cachesvc.cli.subcommand import EXIT_USAGE
from cachesvc.cli.verify import run_verify_command
from cachesvc.config import proxy_environment
from cachesvc.errors import CachesvcError, ConfigError, StoreError, UsageError

__all__ = ["build_parser", "main"]


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``cachesvc`` command; returns the exit status."""
    args = build_parser().parse_args(argv)
    try:
        config = load_for(args)
        if args.command in ADMIN_COMMANDS:
            return run_admin_command(args, config)
        if args.command == "verify":
            return run_verify_command(args, config)
        if args.command in ("serve", "check-config"):
            # The daemon's egress proxies; an unusable $HTTPS_PROXY is refused like a bad key.
            config = replace(config, proxy_environment=proxy_environment(os.environ))
            refuse_port_zero(config)
        if args.command == "serve":
            return run_serve(config, config_path(args))
        if args.command == "check-config":
            return run_check_config(config)
        return run_containerd_config(args, config)
    except ConfigError as exc:
        print(f"cachesvc: invalid configuration: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except UsageError as exc:
        print(f"cachesvc: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except StoreError as exc:
        print(f"cachesvc: storage: {exc}", file=sys.stderr)
        return 1
    except CachesvcError as exc:
        print(f"cachesvc: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
