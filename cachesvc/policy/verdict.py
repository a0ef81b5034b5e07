"""The outcome of checking an image's signatures: verified (with which key), or why not.

"Signature by an unknown key" and "bad signature" cannot always be told apart: an altered
ECDSA signature is, mathematically, a valid signature by *some* other key. So a well-formed
signature over intact bytes that no configured key accepts is ``UNKNOWN_KEY`` (the usual
cause: a rotated key not yet configured), unless the artifact names its key (a bundle's key
hint) and that key is configured, which makes it ``BAD_SIGNATURE``. Broken artifacts (a layer
whose bytes miss their digest, an undecodable signature, an unparsable payload) are
``BAD_SIGNATURE`` too.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass

__all__ = ["Reason", "Verdict", "combine"]


class Reason(enum.Enum):
    """Why an image is refused; the value is the phrase a 403 message starts with."""

    NO_SIGNATURE = "no signature"
    UNKNOWN_KEY = "signature by an unknown key"
    BAD_SIGNATURE = "bad signature"
    WRONG_DIGEST = "digest claim for another image"

    @property
    def rank(self) -> int:
        """How much a refusal says; ``combine`` reports the most telling one. A trusted key's
        signature for another image beats a broken one, which beats a stranger's."""
        return _RANK[self]


_RANK = {
    Reason.NO_SIGNATURE: 0,
    Reason.UNKNOWN_KEY: 1,
    Reason.BAD_SIGNATURE: 2,
    Reason.WRONG_DIGEST: 3,
}


@dataclass(frozen=True, slots=True)
class Verdict:
    """What was decided about ``digest``.

    ``reason`` is None exactly when verified; then ``key`` names the key (its file) that
    verified. ``via`` says which artifact decided: ``simple signing``, ``sigstore bundle``,
    or ``index sha256:...`` for a platform manifest covered by its signed index.
    """

    digest: str
    reason: Reason | None
    via: str = ""
    key: str = ""
    detail: str = ""

    @classmethod
    def verified(cls, digest: str, *, key: str, via: str, detail: str = "") -> Verdict:
        """A signature by ``key`` covers ``digest``."""
        return cls(digest, None, via=via, key=key, detail=detail)

    @classmethod
    def refused(cls, digest: str, reason: Reason, detail: str, *, via: str = "") -> Verdict:
        """``digest`` is not covered, for ``reason``; ``detail`` says what was found."""
        return cls(digest, reason, via=via, detail=detail)

    @property
    def ok(self) -> bool:
        """Whether a configured key's signature covers the digest."""
        return self.reason is None

    def covering(self, child: str) -> Verdict:
        """This verified index's verdict, carried to one of its platform manifests."""
        if not self.ok:
            raise ValueError("only a verified index covers its manifests")
        return Verdict.verified(child, key=self.key, via=f"index {self.digest}")

    def message(self) -> str:
        """One line for a 403 body or a log: what failed, or what verified."""
        if self.reason is None:
            return f"{self.digest} verified by {self.key} ({self.via})"
        head = f"{self.reason.value}: {self.digest}"
        return f"{head} ({self.via}: {self.detail})" if self.via else f"{head} ({self.detail})"


def combine(digest: str, verdicts: Iterable[Verdict]) -> Verdict:
    """One verdict from those of every signature found: the first verified one if any, else
    the most telling refusal; no verdicts at all is NO_SIGNATURE."""
    best: Verdict | None = None
    for verdict in verdicts:
        if verdict.ok:
            return verdict
        assert verdict.reason is not None
        if best is None or (best.reason is not None and verdict.reason.rank > best.reason.rank):
            best = verdict
    if best is None:
        return Verdict.refused(digest, Reason.NO_SIGNATURE, "no cosign signature or bundle found")
    return best
