"""``serve``: run the daemon until SIGTERM or SIGINT, then shut down gracefully."""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Callable

from cachesvc.app.daemon import Daemon
from cachesvc.config import Config

log = logging.getLogger("cachesvc")


async def serve(
    config: Config, *, announce: bool = True, on_ready: Callable[[Daemon], None] | None = None
) -> None:
    """Run the daemon until SIGTERM or SIGINT, then shut down gracefully.

    ``on_ready`` runs once both listeners are bound (the CLI's start-up banner).
    """
    daemon = Daemon(config)
    await daemon.start()
    if on_ready is not None:
        on_ready(daemon)
    if announce:
        log.info(
            "cachesvc listening",
            extra={
                "fields": {
                    "mirror": daemon.mirror_url,
                    "admin": daemon.admin_url,
                    "storage": str(config.storage.root),
                    "registries": sorted(config.registries),
                }
            },
        )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
        log.info("shutting down (grace %.0fs)", config.shutdown_grace)
    finally:
        await daemon.stop()
    log.info("stopped")
