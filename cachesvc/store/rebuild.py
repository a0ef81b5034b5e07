"""Rebuilding the index from the files when it was lost or damaged.

The index (``cachesvc.store.index``) is a cache of facts about the files, and most of
them can be read back from the files themselves: a manifest is self-describing (its
JSON says what it is), so every blob file that parses as an image manifest or index
(``cachesvc.oci.image``) is recorded as a manifest again with its media type, and
served by digest even while upstream is down. What cannot be rebuilt is logged:

- tag mappings: tags resolve upstream again on their next request;
- origins (the repositories a manifest was fetched for): the inventory lists such
  images without a repository until they are pulled again (pinned images get theirs
  back from the pin list);
- last-access times: eviction falls back to the files' mtimes.

Pins do not live in the index (``cachesvc.store.pins``: ``<root>/pins.json``), so
they survive.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from pathlib import Path

from cachesvc.errors import ManifestInvalid
from cachesvc.oci import MAX_MANIFEST_BYTES
from cachesvc.oci.image import Index, parse_manifest
from cachesvc.oci.media import MEDIA_OCI_INDEX, MEDIA_OCI_MANIFEST
from cachesvc.store.content import Content
from cachesvc.store.index import Index as StoreIndex

log = logging.getLogger("cachesvc.store")


def set_aside(directory: Path, why: str) -> Path:
    """Move a damaged index out of the way (kept for inspection); its new name."""
    aside = directory.with_name(f"{directory.name}.damaged-{int(time.time())}")
    shutil.move(str(directory), str(aside))
    log.error("the index at %s is damaged (%s): moved to %s, rebuilding", directory, why, aside)
    return aside


def rebuild(content: Content, index: StoreIndex, why: str) -> int:
    """Record every stored manifest in ``index`` again; returns how many (blocking)."""
    found = files = 0
    for digest, size, _ in content.files():
        files += 1
        if size == 0 or size > MAX_MANIFEST_BYTES:
            continue
        media_type = _manifest_type(content.path(digest))
        if media_type is not None:
            index.set_media_type(digest, media_type)
            found += 1
    log.warning(
        "index %s: rebuilt from %d stored files, %d manifests found; lost: tag mappings "
        "(resolved upstream again), origins of unpinned images (inventory rows without a "
        "repository until pulled again), last-access times (eviction uses file mtimes)",
        why, files, found,
        extra={"fields": {"event": "index rebuilt", "files": files, "manifests": found}},
    )  # fmt: skip
    return found


def _manifest_type(path: Path) -> str | None:
    """The media type of a stored manifest file, or None for anything else."""
    try:
        with open(path, "rb") as f:
            head = f.read(1)
            if head != b"{":  # layers are compressed tars: one byte rules most out
                return None
            body = head + f.read(MAX_MANIFEST_BYTES)
    except OSError:
        return None
    try:
        parsed = parse_manifest("", body)
    except ManifestInvalid:
        return None  # an image config, or other JSON: not a manifest
    if parsed.media_type:
        return parsed.media_type
    return MEDIA_OCI_INDEX if isinstance(parsed, Index) else MEDIA_OCI_MANIFEST


def index_present(directory: Path) -> bool:
    """True when ``directory`` holds an index database (it is about to be opened)."""
    return os.path.exists(directory / "cache.db")
