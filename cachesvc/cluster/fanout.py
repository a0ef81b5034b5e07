"""Fan-out: at most ``cluster.fanout`` peers stream one blob from this daemon at once.

Beyond that the asking peer is redirected to a member that already has the blob or is
filling it from this daemon (a *holder*: a peer that streamed or is streaming it from here),
so a rollout forms a tree of depth about log_fanout(N) instead of N streams from one owner.
Holders are chosen least-redirected first, so the tree stays wide. A holder streaming from
this daemon is filling as bytes land, so it can serve the redirected peer at once.

Why a tree and not a star, and what it costs: a node's uplink is shared by its children, so a
level of the tree with fanout f moves at most link/f per child (benchmarks/fanout_model.py);
the fan-out bounds how many NICs one blob's bytes must cross serially, not the wall time.

Memory is bounded: the holders of at most ``MAX_DIGESTS`` blobs are remembered (oldest first
forgotten), at most ``MAX_HOLDERS`` per blob.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

from cachesvc.config.peeraddress import PeerAddress

__all__ = ["Fanout", "Slot"]

MAX_DIGESTS = 4096
MAX_HOLDERS = 64


@dataclass(slots=True)
class _Blob:
    streams: int = 0
    holders: dict[PeerAddress, int] = field(default_factory=dict)  # -> redirects sent to it


@dataclass(slots=True)
class Slot:
    """One peer stream of one blob; :meth:`Fanout.leave` it when the response ends."""

    digest: str
    peer: PeerAddress | None


class Fanout:
    """Concurrent peer streams per blob and who holds each blob, for redirects."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.peak = 0  # the most streams of one blob at once since start (a metric)
        self._blobs: OrderedDict[str, _Blob] = OrderedDict()

    def enter(
        self,
        digest: str,
        peer: PeerAddress | None,
        usable: Callable[[PeerAddress], bool],
    ) -> Slot | PeerAddress:
        """A slot to stream ``digest`` to ``peer``, or the holder to redirect ``peer`` to.

        ``usable`` says whether a holder may be sent peers now (a member, not blocked or
        unreachable). With no usable holder the stream is served here anyway: a redirect
        to nowhere would only push the asker to upstream.
        """
        blob = self._blob(digest)
        if blob.streams >= self.limit:
            target = self._holder(blob, peer, usable)
            if target is not None:
                blob.holders[target] += 1
                return target
        blob.streams += 1
        self.peak = max(self.peak, blob.streams)
        if peer is not None and peer not in blob.holders and len(blob.holders) < MAX_HOLDERS:
            blob.holders[peer] = 0
        return Slot(digest, peer)

    def leave(self, slot: Slot, *, completed: bool) -> None:
        """The stream ended; a peer whose stream failed is no holder to send others to."""
        blob = self._blobs.get(slot.digest)
        if blob is None:
            return
        blob.streams = max(0, blob.streams - 1)
        if not completed and slot.peer is not None:
            blob.holders.pop(slot.peer, None)

    def streams(self, digest: str) -> int:
        """Peer streams of ``digest`` running now."""
        blob = self._blobs.get(digest)
        return blob.streams if blob is not None else 0

    def _blob(self, digest: str) -> _Blob:
        blob = self._blobs.get(digest)
        if blob is None:
            blob = self._blobs[digest] = _Blob()
            while len(self._blobs) > MAX_DIGESTS:
                oldest, old = next(iter(self._blobs.items()))
                if old.streams:  # never forget a blob being streamed (its count matters)
                    self._blobs.move_to_end(oldest)
                    break
                del self._blobs[oldest]
        else:
            self._blobs.move_to_end(digest)
        return blob

    @staticmethod
    def _holder(
        blob: _Blob, asker: PeerAddress | None, usable: Callable[[PeerAddress], bool]
    ) -> PeerAddress | None:
        candidates = [p for p in blob.holders if p != asker and usable(p)]
        if not candidates:
            return None
        return min(candidates, key=lambda p: (blob.holders[p], str(p)))
