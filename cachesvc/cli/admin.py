"""The commands that talk to a running daemon's admin API: prewarm, status, images,
purge, pins, unpin, jobs, cancel.

The admin URL defaults to ``admin.listen`` of the configuration and the token to the
content of ``admin.token_file`` (``--token-file`` or ``$CACHESVC_ADMIN_TOKEN_FILE``
override it). Exit statuses are documented in adminclient.py.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from pathlib import Path

from cachesvc.cli.subcommand import EXIT_USAGE, Subcommands
from cachesvc.config import Config
from cachesvc.errors import AdminUnavailable
from cachesvc.ops.adminclient import (
    AdminClient,
    run_cancel,
    run_images,
    run_jobs,
    run_pins,
    run_prewarm,
    run_purge,
    run_status,
    run_unpin,
)


def add_admin_commands(sub: Subcommands) -> None:
    """The subcommands that talk to a running daemon's admin API, and their flags."""
    prewarm = sub.add_parser(
        "prewarm",
        help="fetch images into the cache before a rollout",
        description="Submit a prewarm job and follow it: a progress bar per image on a "
        "terminal, plain lines otherwise. Exit 0 only if every image succeeded.",
    )
    prewarm.add_argument("refs", nargs="*", metavar="REF", help="image references")
    prewarm.add_argument("--file", metavar="F", help="read references from F, one per line")
    prewarm.add_argument("--platform", action="append", default=[], metavar="OS/ARCH",
                         help="platform to fetch from an index (repeatable; default: the "
                         "node's own)")  # fmt: skip
    prewarm.add_argument("--pin", action="store_true", help="pin the images (no eviction)")
    prewarm.add_argument("--cluster", action="store_true",
                         help="prewarm on every cluster member (cluster mode; one upstream "
                         "fetch per blob for the whole cluster)")  # fmt: skip
    status = sub.add_parser("status", help="health summary: hit ratio, cache fill, upstreams")
    images = sub.add_parser("images", help="list cached images")
    images.add_argument("--registry", help="only this registry")
    images.add_argument("--repository", help="only this repository")
    images.add_argument("--pinned", action="store_true", help="only pinned images")
    images.add_argument("--json", action="store_true", help="print JSON instead of a table")
    purge = sub.add_parser("purge", help="remove cached images and the blobs only they use")
    purge.add_argument("refs", nargs="+", metavar="REF", help="image references")
    pins = sub.add_parser("pins", help="list pinned images")
    unpin = sub.add_parser("unpin", help="unpin images (a tag: every digest pinned under it)")
    unpin.add_argument("refs", nargs="+", metavar="REF", help="image references")
    jobs = sub.add_parser("jobs", help="list prewarm jobs, or show one")
    jobs.add_argument("job", nargs="?", metavar="ID", help="a job id")
    cancel = sub.add_parser("cancel", help="cancel a prewarm job")
    cancel.add_argument("job", metavar="ID", help="the job id")
    for cmd in (prewarm, status, images, purge, pins, unpin, jobs, cancel):
        cmd.add_argument("--config", metavar="FILE",
                         help="configuration file for the defaults below")  # fmt: skip
        cmd.add_argument("--admin", metavar="URL",
                         help="admin listener URL (default: from admin.listen)")  # fmt: skip
        cmd.add_argument("--token-file", metavar="F",
                         help="admin token file (default: admin.token_file)")  # fmt: skip


def _admin_client(args: argparse.Namespace, config: Config, *, token: bool) -> AdminClient:
    """The admin URL and token; ``token=False``: use the token only if one is configured."""
    address = config.admin.listen
    host = "127.0.0.1" if address.host in ("0.0.0.0", "::") else address.host
    url = args.admin or (
        f"http://[{host}]:{address.port}" if ":" in host else f"http://{host}:{address.port}"
    )
    path = args.token_file or os.environ.get("CACHESVC_ADMIN_TOKEN_FILE") or config.admin.token_file
    secret = None
    if path:
        try:
            # The first token: the file may hold several during a rotation (any is accepted).
            secret = next(iter(Path(path).read_text(encoding="utf-8").split()), None)
        except OSError as exc:
            if token:
                raise AdminUnavailable(f"cannot read the admin token file {path}: {exc}") from None
    return AdminClient(url.rstrip("/"), secret, str(path) if path else None)


def _references(args: argparse.Namespace) -> list[str]:
    refs = list(args.refs)
    if args.file:
        try:
            text = Path(args.file).read_text(encoding="utf-8")
        except OSError as exc:
            raise AdminUnavailable(f"cannot read {args.file}: {exc}", EXIT_USAGE) from None
        for line in text.splitlines():
            line = line.split("#", 1)[0].strip()
            if line:
                refs.append(line)
    if not refs:
        raise AdminUnavailable("give at least one image reference (or --file)", EXIT_USAGE)
    return refs


ADMIN_COMMANDS = ("prewarm", "status", "images", "purge", "pins", "unpin", "jobs", "cancel")


def run_admin_command(args: argparse.Namespace, config: Config) -> int:
    """Run one of ``ADMIN_COMMANDS``; its exit status (see adminclient.py)."""
    try:
        client = _admin_client(args, config, token=args.command != "status")
        return asyncio.run(_admin_command(args, client))
    except AdminUnavailable as exc:
        print(f"cachesvc {args.command}: {exc}", file=sys.stderr)
        return exc.status


async def _admin_command(args: argparse.Namespace, client: AdminClient) -> int:
    out = sys.stdout
    match args.command:
        case "status":
            return await run_status(client, out)
        case "images":
            wanted = (
                ("registry", args.registry),
                ("repository", args.repository),
                ("pinned", "true" if args.pinned else None),
            )
            filters = {k: v for k, v in wanted if v}
            return await run_images(client, filters, out, as_json=args.json)
        case "purge":
            return await run_purge(client, args.refs, out)
        case "pins":
            return await run_pins(client, out)
        case "unpin":
            return await run_unpin(client, args.refs, out)
        case "jobs":
            return await run_jobs(client, args.job, out)
        case "cancel":
            return await run_cancel(client, args.job, out)
    refs = _references(args)
    return await run_prewarm(
        client, refs, args.platform, args.pin, out, tty=out.isatty(),
        scope="cluster" if args.cluster else "node",
    )  # fmt: skip
