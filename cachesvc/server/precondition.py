"""Conditional requests on blobs (RFC 9110 section 13), against the one validator a blob has.

A blob is content-addressed: its strong entity tag is its digest (``"sha256:..."``),
the same on a hit, a fill and a HEAD, on every node, and valid for ever. No
``Last-Modified``: when this node happened to store the file says nothing about the
bytes, so date preconditions (``If-Modified-Since``, ``If-Unmodified-Since``, a date
in ``If-Range``) have nothing to compare against and are treated as RFC 9110 says a
server without that validator does (ignored; a date ``If-Range`` sends the whole blob).
"""

from __future__ import annotations

from collections.abc import Mapping


def entity_tag(digest: str) -> str:
    """The strong entity tag of the blob ``digest``."""
    return f'"{digest}"'


def _listed(header: str, etag: str, *, weak: bool) -> bool:
    """True if the entity-tag list ``header`` names ``etag`` (``*`` names any)."""
    for item in header.split(","):
        tag = item.strip()
        if tag == "*" or tag == etag:
            return True
        if weak and tag.startswith("W/") and tag[2:] == etag:
            return True
    return False


def failed_status(headers: Mapping[str, str], etag: str) -> int | None:
    """The status a GET or HEAD answers instead when a precondition fails, else None.

    ``If-Match`` not naming the blob: 412. ``If-None-Match`` naming it (weak
    comparison, as RFC 9110 13.1.2 asks): 304, the client already has these bytes.
    """
    if_match = headers.get("If-Match")
    if if_match is not None and not _listed(if_match, etag, weak=False):
        return 412
    if_none_match = headers.get("If-None-Match")
    if if_none_match is not None and _listed(if_none_match, etag, weak=True):
        return 304
    return None


def range_applies(headers: Mapping[str, str], etag: str) -> bool:
    """False when ``If-Range`` does not name the blob exactly: send all of it, not the range."""
    if_range = headers.get("If-Range")
    return if_range is None or if_range.strip() == etag
