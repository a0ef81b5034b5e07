"""Pinned images: every blob of a pinned image is exempt from eviction until unpinned.

A pin names one image by its manifest digest (an index or a single manifest) and
records the digests of every blob that image consists of for the platforms that
were prewarmed: the index, the platform manifests, configs and layers. The list is
persisted in the store's index, so pins survive restarts; eviction asks
``protects(digest)``.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass

from cachesvc.metrics import Metrics
from cachesvc.oci.reference import ImageReference
from cachesvc.store.store import Store


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
        self._pins: list[Pin] = []
        for raw in store.index.load_pins():
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
                    )
                )
            except (KeyError, TypeError, ValueError):  # a damaged record protects nothing
                continue
        self._protected: set[str] = set()
        self._refresh()

    def _refresh(self) -> None:
        self._protected = {b for pin in self._pins for b in (pin.digest, *pin.blobs)}
        self._metrics.pinned_images.set(len(self._pins))

    def _save(self) -> None:
        self._store.index.save_pins([asdict(pin) | {"blobs": list(pin.blobs),
                                              "platforms": list(pin.platforms)}
                               for pin in self._pins])  # fmt: skip
        self._refresh()

    def add(
        self,
        reference: ImageReference,
        digest: str,
        blobs: set[str],
        platforms: list[str],
    ) -> Pin:
        """Pin an image (replacing an earlier pin of the same reference)."""
        pin = Pin(
            ref=str(reference),
            registry=reference.target.registry,
            repository=reference.target.repository,
            digest=digest,
            blobs=tuple(sorted(blobs)),
            platforms=tuple(platforms),
            pinned_at=time.time(),
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

    def list(self) -> list[Pin]:
        """Every pin, oldest first."""
        return list(self._pins)

    def protects(self, digest: str) -> bool:
        """True when a pinned image holds ``digest``."""
        return digest in self._protected

    def pinned_roots(self) -> set[str]:
        """Manifest digests of pinned images."""
        return {p.digest for p in self._pins}
