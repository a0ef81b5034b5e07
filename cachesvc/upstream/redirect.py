"""The rules for following an upstream redirect (``Upstream`` runs the loop).

Redirects (301/302/303/307/308, e.g. Docker Hub's blob GETs to a signed CDN URL) are
followed by cachesvc rather than by aiohttp so that the rules are explicit: at most
``MAX_REDIRECTS`` hops, a loop is an error, ``Authorization`` is dropped as soon as the
origin (scheme, host, port) changes and never restored, https never downgrades to
http unless the registry is ``insecure``, and the ``Location`` is never cached (signed
URLs expire; every fill starts at the registry again). aiohttp would drop the header
on an origin change too (``client.py``, ``url.origin() != redirect_origin``), but
counts the limit so that ``max_redirects=5`` follows only four hops.
"""

from __future__ import annotations

from yarl import URL

MAX_REDIRECTS = 5
REDIRECTS = frozenset((301, 302, 303, 307, 308))


def target_of(here: URL, location: str | None) -> URL | None:
    """The absolute URL a ``Location`` points to from ``here``; None when unusable."""
    try:
        target = here.join(URL(location)) if location else None
    except ValueError:
        return None
    if target is None or target.scheme not in ("http", "https") or not target.host:
        return None
    return target


def refusal(
    here: URL, target: URL | None, *, hops: int, seen: set[str], insecure: bool
) -> str | None:
    """Why the hop ``here`` -> ``target`` (the ``hops``-th) must not be taken; None: take it."""
    if target is None:
        return "a redirect without a usable Location"
    if hops > MAX_REDIRECTS:
        return f"more than {MAX_REDIRECTS} redirects"
    if str(target) in seen:
        return "a redirect loop"
    if here.scheme == "https" and target.scheme == "http" and not insecure:
        return "a redirect from https to plain http"
    return None


def where(url: URL) -> str:
    """A URL fit for logs and error messages: no query (signed URLs), no userinfo."""
    return str(url.with_query(None).with_fragment(None).with_user(None))
