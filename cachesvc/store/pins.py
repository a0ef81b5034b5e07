"""Pinned images: every blob of a pinned image is exempt from eviction until unpinned.

A pin names one image by its manifest digest (an index or a single manifest) and
records the digests of every blob that image consists of for the platforms that
were prewarmed: the index, the platform manifests, configs and layers. Eviction
asks ``protects(digest)``.

The list lives in ``<root>/pins.json``, beside the index rather than in it: pins are
the one thing the files cannot tell, so they must survive a lost or damaged index
(``cachesvc.store.rebuild``). It is written atomically (temp file, fsync, rename,
directory fsync); a store from before keeps its pins (read once from the index).

A pin records whether its image is ``complete``: a ``pin: true`` prewarm pins
first (so early blobs are not evicted while later ones arrive) with
``complete=False`` and marks it complete when every blob is stored. A daemon
killed in between leaves an incomplete pin, and a blob found damaged later makes
one incomplete again: ``incomplete()`` lists them (logged at start-up, the
``cachesvc_pinned_incomplete_images`` gauge, the inventory's ``complete``); a new
prewarm of the image completes it.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass, replace
from typing import Any

from cachesvc.atomicfile import write_atomically
from cachesvc.errors import CachesvcError
from cachesvc.metrics import Metrics
from cachesvc.oci import Digest
from cachesvc.oci.reference import ImageReference
from cachesvc.store.store import Store

log = logging.getLogger("cachesvc.pins")
PINS_FILE = "pins.json"  # under the storage root, beside index/


@dataclass(frozen=True, slots=True)
class Pin:
    """One pinned image."""

    ref: str  # the reference as the operator wrote it, normalised
    registry: str
    repository: str
    digest: str  # the manifest (or index) digest the reference resolved to
    blobs: tuple[str, ...]  # every digest the image holds, manifests included
    platforms: tuple[str, ...]
    pinned_at: float
    complete: bool = True  # every blob was stored when the prewarm that pinned it ended

    def matches(self, reference: ImageReference) -> bool:
        """True when ``reference`` names this pin (same repository, and tag or digest)."""
        if (reference.target.registry, reference.target.repository) != (
            self.registry,
            self.repository,
        ):
            return False
        if reference.digest is not None:
            return str(reference.digest) == self.digest
        return self.ref == str(reference)

    def to_json(self) -> dict[str, object]:
        """The pin as the admin API shows it (without the blob list's bulk)."""
        data = asdict(self)
        data["blobs"] = len(self.blobs)
        return data


class Pins:
    """The persisted pin list and the set of blob digests it protects."""

    def __init__(self, store: Store, metrics: Metrics) -> None:
        self._store = store
        self._metrics = metrics
        self._file = store.root / PINS_FILE
        self._pins: list[Pin] = []
        raw_pins, migrate = self._load()
        for raw in raw_pins:
            try:
                self._pins.append(
                    Pin(
                        ref=str(raw["ref"]),
                        registry=str(raw["registry"]),
                        repository=str(raw["repository"]),
                        digest=str(raw["digest"]),
                        blobs=tuple(str(b) for b in raw["blobs"]),
                        platforms=tuple(str(p) for p in raw["platforms"]),
                        pinned_at=float(raw["pinned_at"]),
                        complete=bool(raw.get("complete", True)),
                    )
                )
            except (KeyError, TypeError, ValueError):  # a damaged record protects nothing
                log.error("pins: a damaged pin record is dropped: %.200r", raw)
                continue
        self._protected: set[str] = set()
        if migrate:
            self._save()
        self._refresh()
        metrics.pinned_incomplete.set_function(lambda: len(self.incomplete()))
        for pin in self.incomplete():
            log.warning(
                "pinned image %s (%s) is incomplete: prewarm it again with pin to complete it",
                pin.ref, pin.digest,
            )  # fmt: skip
        for pin in self._pins:  # origins the index may have lost (inventory rows)
            self._note_origins(pin)

    def _load(self) -> tuple[list[Any], bool]:
        """The raw pin records, and whether they came from the index (a store from before)."""
        try:
            data = json.loads(self._file.read_bytes())
        except FileNotFoundError:
            legacy = self._store.index.load_pins()
            return legacy, bool(legacy)
        except (OSError, ValueError) as exc:
            log.error("pins: %s cannot be read (%s): no pins loaded", self._file, exc)
            return [], False
        return (data if isinstance(data, list) else []), False

    def _note_origins(self, pin: Pin) -> None:
        try:
            digest = Digest.parse(pin.digest)
            if self._store.index.media_type(digest) is not None:
                self._store.index.note_origin(digest, pin.registry, pin.repository)
        except (CachesvcError, OSError):
            return

    def _refresh(self) -> None:
        self._protected = {b for pin in self._pins for b in (pin.digest, *pin.blobs)}
        self._metrics.pinned_images.set(len(self._pins))

    def _save(self) -> None:
        records = [asdict(pin) | {"blobs": list(pin.blobs), "platforms": list(pin.platforms)}
                   for pin in self._pins]  # fmt: skip
        write_atomically(self._file, json.dumps(records).encode())
        self._refresh()

    def add(
        self,
        reference: ImageReference,
        digest: str,
        blobs: set[str],
        platforms: list[str],
        *,
        complete: bool = True,
    ) -> Pin:
        """Pin an image (replacing an earlier pin of the same reference and digest)."""
        pin = Pin(
            ref=str(reference),
            registry=reference.target.registry,
            repository=reference.target.repository,
            digest=digest,
            blobs=tuple(sorted(blobs)),
            platforms=tuple(platforms),
            pinned_at=time.time(),
            complete=complete,
        )
        self._pins = [p for p in self._pins if p.ref != pin.ref or p.digest != pin.digest]
        self._pins.append(pin)
        self._save()
        return pin

    def remove(self, reference: ImageReference) -> list[Pin]:
        """Unpin every pin ``reference`` names; returns what was removed."""
        removed = [p for p in self._pins if p.matches(reference)]
        if removed:
            self._pins = [p for p in self._pins if not p.matches(reference)]
            self._save()
        return removed

    def completed(self, pin: Pin) -> None:
        """Every blob of ``pin``'s image is stored now."""
        self._pins = [replace(p, complete=True) if p == pin else p for p in self._pins]
        self._save()

    def incomplete(self) -> list[Pin]:
        """Pins whose image is not wholly stored (a prewarm that did not finish, or a
        blob dropped as damaged since)."""
        return [pin for pin in self._pins if not self.is_complete(pin)]

    def is_complete(self, pin: Pin) -> bool:
        """True when the pin's prewarm finished and every blob it names is stored."""
        if not pin.complete:
            return False
        for blob in (pin.digest, *pin.blobs):
            try:
                if self._store.size(Digest.parse(blob)) is None:
                    return False
            except CachesvcError:
                return False
        return True

    def list(self) -> list[Pin]:
        """Every pin, oldest first."""
        return list(self._pins)

    def protects(self, digest: str) -> bool:
        """True when a pinned image holds ``digest``."""
        return digest in self._protected

    def pinned_roots(self) -> set[str]:
        """Manifest digests of pinned images."""
        return {p.digest for p in self._pins}
