"""What the cache holds, image by image, and purging one image.

The store knows blobs, manifests (with the repositories they were fetched for) and
tag mappings; an *image* is a manifest no cached index refers to (a root): an
index with the platform manifests that were pulled, or a single manifest. Its blobs
are the root, the platform manifests, their configs and layers. One inventory row
per (root, registry, repository)::

    registry, repository, tags (seen), digest, media_type, platforms,
    size_bytes (of the blobs present), blobs_cached / blobs_total, last_pulled, pinned,
    complete (every blob stored; for a pinned image also: its prewarm finished)

A pinned image whose root manifest is not stored (a prewarm killed before it) is
listed too, from its pin, as not complete: prewarm it again.

Purging an image removes its manifests, its tag mappings and the blobs no other
cached image uses; a pinned image is refused (unpin first); blobs being read or
filled right now stay (reported as ``kept_in_use``) and go at the next purge or sweep.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import defaultdict
from dataclasses import dataclass, field

from cachesvc.errors import CachesvcError, Conflict, ManifestInvalid, NotFound
from cachesvc.metrics import Metrics
from cachesvc.mirror.manifests import Manifests
from cachesvc.oci import INDEX_MEDIA_TYPES, Digest
from cachesvc.oci.image import Index, Manifest, config_platform, parse_manifest
from cachesvc.oci.reference import ImageReference
from cachesvc.store.retention import Retention
from cachesvc.store.store import Store

MAX_CONFIG_BYTES = 1024 * 1024  # configs read for their platform; bigger ones are skipped


@dataclass(slots=True)
class _Image:
    digest: str
    media_type: str
    blobs: dict[str, int | None] = field(default_factory=dict)  # digest -> declared size
    manifests: set[str] = field(default_factory=set)
    platforms: list[str] = field(default_factory=list)
    origins: set[tuple[str, str]] = field(default_factory=set)


class Inventory:
    """Inventory rows and purges over the store."""

    def __init__(
        self,
        store: Store,
        manifests: Manifests,
        retention: Retention,
        metrics: Metrics,
    ) -> None:
        self._store = store
        self._manifests = manifests
        self._retention = retention
        self._pins = retention.pins
        self._metrics = metrics
        self._lock = asyncio.Lock()

    # -- reading (runs in a thread: it reads manifest files) -------------------------

    def _read(self, digest: str) -> bytes:
        try:
            return self._store.path(Digest.parse(digest)).read_bytes()
        except (OSError, CachesvcError):
            return b""

    def _parsed(self, digest: str, media_type: str) -> Manifest | Index | None:
        """A stored manifest in the image model; None for one it cannot read (a schema 1
        or artifact manifest, a damaged file): listed, but with no known blobs."""
        try:
            return parse_manifest(media_type, self._read(digest))
        except ManifestInvalid:
            return None

    def _config_platform(self, config: Digest) -> str | None:
        try:
            platform = config_platform(self._read(str(config)))
        except ManifestInvalid:  # not cached, or not JSON
            return None
        return str(platform) if platform is not None else None

    def _images(self) -> tuple[dict[str, _Image], dict[str, list[tuple[str, str, str]]]]:
        records = {str(r.digest): (r, origins) for r, origins in self._store.manifests()}
        children: dict[str, list[tuple[str, str | None]]] = {}
        for digest, (record, _) in records.items():
            parsed = self._parsed(digest, record.media_type)
            if isinstance(parsed, Index):
                children[digest] = [
                    (str(d.digest), str(d.platform) if d.platform else None)
                    for d in parsed.manifests
                ]
            elif parsed is None and record.media_type in INDEX_MEDIA_TYPES:
                children[digest] = []  # an index that cannot be read: its children unknown
        referenced = {child for items in children.values() for child, _ in items}
        tags: dict[str, list[tuple[str, str, str]]] = defaultdict(list)
        for key, tag_record in self._store.index.tags():
            registry, repository, tag, _ = [*key.split("\0", 3), "", "", ""][:4]
            entry = (registry, repository, tag)
            if entry not in tags[str(tag_record.digest)]:
                tags[str(tag_record.digest)].append(entry)
        images: dict[str, _Image] = {}
        for digest, (record, origins) in records.items():
            if digest in referenced:
                continue
            image = _Image(digest, record.media_type, origins=set(origins))
            image.origins |= {(r, repo) for r, repo, _ in tags.get(digest, [])}
            image.blobs[digest] = record.size
            image.manifests.add(digest)
            if digest in children:
                for child, platform in children[digest]:
                    if child in records:
                        image.manifests.add(child)
                        image.blobs[child] = records[child][0].size
                        image.origins |= set(records[child][1])
                        self._add_manifest(image, child, platform)
            else:
                self._add_manifest(image, digest, None)
            images[digest] = image
        return images, tags

    def _add_manifest(self, image: _Image, digest: str, platform: str | None) -> None:
        parsed = self._parsed(digest, "")
        if isinstance(parsed, Manifest):
            image.blobs.update((str(d.digest), d.size) for d in parsed.blobs)
            if platform is None and parsed.config.size <= MAX_CONFIG_BYTES:
                platform = self._config_platform(parsed.config.digest)
        image.platforms.append(platform or "unknown")

    def _rows(self, filters: dict[str, str]) -> list[dict[str, object]]:
        images, tags = self._images()
        pinned = self._pins.pinned_roots()
        whole: dict[str, bool] = {}  # pinned root -> every pin of it complete
        for pin in self._pins.list():
            whole[pin.digest] = whole.get(pin.digest, True) and self._pins.is_complete(pin)
        rows: list[dict[str, object]] = self._unstored_pins(images, filters)
        for image in images.values():
            present: dict[str, int] = {}
            for blob in image.blobs:
                with contextlib.suppress(CachesvcError, OSError):  # EIO: not present
                    size = self._store.size(Digest.parse(blob))
                    if size is not None:
                        present[blob] = size
            # A pull of this image asks for its own manifest (or index); a shared layer is
            # also read for other images, so its access time says nothing about this one.
            last = self._store.last_access(Digest.parse(image.digest))
            for registry, repository in sorted(image.origins) or [("", "")]:
                row: dict[str, object] = {
                    "registry": registry or None,
                    "repository": repository or None,
                    "tags": sorted(
                        t for r, repo, t in tags.get(image.digest, [])
                        if (r, repo) == (registry, repository)
                    ),
                    "digest": image.digest,
                    "media_type": image.media_type,
                    "platforms": sorted(set(image.platforms)),
                    "size_bytes": sum(present.values()),
                    "blobs_cached": len(present),
                    "blobs_total": len(image.blobs),
                    "last_pulled": last,
                    "pinned": image.digest in pinned,
                    "complete": len(present) == len(image.blobs) and whole.get(image.digest, True),
                }  # fmt: skip
                if _matches(row, filters):
                    rows.append(row)
        rows.sort(key=lambda r: (str(r["registry"]), str(r["repository"]), str(r["digest"])))
        return rows

    def _unstored_pins(
        self, images: dict[str, _Image], filters: dict[str, str]
    ) -> list[dict[str, object]]:
        """Rows for pinned images whose root manifest is not stored: incomplete."""
        rows: list[dict[str, object]] = []
        for pin in self._pins.list():
            if pin.digest in images:
                continue
            row: dict[str, object] = {
                "registry": pin.registry, "repository": pin.repository, "tags": [],
                "digest": pin.digest, "media_type": None, "platforms": list(pin.platforms),
                "size_bytes": 0, "blobs_cached": 0, "blobs_total": len(pin.blobs),
                "last_pulled": 0.0, "pinned": True, "complete": False,
            }  # fmt: skip
            if _matches(row, filters):
                rows.append(row)
        return rows

    async def images(self, filters: dict[str, str] | None = None) -> list[dict[str, object]]:
        """Inventory rows; ``filters``: registry, repository, tag, platform, pinned."""
        return await asyncio.to_thread(self._rows, filters or {})

    # -- purge -----------------------------------------------------------------------

    async def purge(self, reference: ImageReference) -> dict[str, object]:
        """Remove an image's manifests, tags, and the blobs no other cached image uses."""
        async with self._lock:
            images, tags = await asyncio.to_thread(self._images)
            target = reference.target
            if reference.digest is not None:
                root = str(reference.digest)
            else:
                root = next(
                    (d for d, entries in tags.items()
                     if (target.registry, target.repository, reference.tag) in entries
                     and d in images),
                    "",
                )  # fmt: skip
            image = images.get(root)
            if image is None:
                raise NotFound(_not_cached(reference, root, images))
            if image.origins and (target.registry, target.repository) not in image.origins:
                raise NotFound(
                    f"{reference} is not cached: {root} is cached for "
                    f"{', '.join(_names(image.origins))}; purge it by one of those names"
                )
            if root in self._pins.pinned_roots():
                raise Conflict(
                    f"{reference} is pinned: unpin it first (DELETE /admin/v1/pins/{reference})"
                )
            others: set[str] = set()
            for digest, other in images.items():
                if digest != root:
                    others |= set(other.blobs)
            doomed = [b for b in image.blobs if b not in others]
            removed, freed, kept = 0, 0, []
            for blob in doomed:  # no await in here: atomic against new leases
                removal = self._retention.remove(Digest.parse(blob))
                if removal.outcome == "in_use":
                    kept.append(blob)
                elif removal.outcome == "removed":
                    removed += 1
                    freed += removal.size
                    self._metrics.evictions.labels("purge").inc()
                    self._metrics.evicted_bytes.labels("purge").inc(removal.size)
            for manifest in image.manifests:
                self._manifests.forget(Digest.parse(manifest))
                self._store.index.forget_origins(Digest.parse(manifest))
            for key, record in list(self._store.index.tags()):
                if str(record.digest) == root:
                    self._store.index.delete_tag(key)
            return {
                "digest": root,
                "repositories": _names(image.origins),
                "blobs_removed": removed,
                "bytes_freed": freed,
                "blobs_shared": len(image.blobs) - len(doomed),
                "kept_in_use": kept,
            }


def _names(origins: set[tuple[str, str]]) -> list[str]:
    """``registry/repository`` for each place an image was pulled from, sorted."""
    return [f"{registry}/{repository}" for registry, repository in sorted(origins)]


def _not_cached(reference: ImageReference, root: str, images: dict[str, _Image]) -> str:
    parent = next((d for d, image in images.items() if root and root in image.manifests), None)
    if parent is not None:  # a platform manifest of a cached index: the index is the image
        return f"{reference} is part of the cached index {parent}: purge the index"
    return f"{reference} is not cached"


def _matches(row: dict[str, object], filters: dict[str, str]) -> bool:
    for key, wanted in filters.items():
        if key == "pinned":
            if str(row["pinned"]).lower() != wanted.lower():
                return False
        elif key == "tag":
            tags = row["tags"]
            if not isinstance(tags, list) or wanted not in tags:
                return False
        elif key == "platform":
            platforms = row["platforms"]
            if not isinstance(platforms, list) or not any(
                p == wanted or p.startswith(wanted + "/") for p in platforms
            ):
                return False
        elif key in ("registry", "repository", "digest") and row[key] != wanted:
            return False
    return True
