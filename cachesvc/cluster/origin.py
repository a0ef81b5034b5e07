"""Whether the request being served came in over the peer API.

A request from a peer is never forwarded to another peer (issue 13): the receiver serves it
from its store or a fill, or fills it from upstream itself, so member lists that disagree
during a change cannot make requests go round in a loop. The peer listener sets this flag
for its handlers; the mirror reads it where it chooses a blob's or a tag's sources. A
context variable rather than a parameter, because the decision sits four calls below the
handler and every other caller of those calls is a local client.
"""

from __future__ import annotations

from contextvars import ContextVar

__all__ = ["PEER_REQUEST", "from_peer"]

PEER_REQUEST: ContextVar[bool] = ContextVar("cachesvc_peer_request", default=False)


def from_peer() -> bool:
    """True inside a request that arrived on the peer listener."""
    return PEER_REQUEST.get()
