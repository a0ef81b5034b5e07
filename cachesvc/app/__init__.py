"""The composition root: build every part from a ``Config``, start, stop.

``Daemon`` owns the object graph (store, upstream session, fills, mirror) and the
two listeners. ``serve`` runs it until SIGTERM/SIGINT and then shuts down within
``shutdown_grace``: stop accepting, let running responses and fills finish, then
cancel what remains (a cancelled fill leaves only a temp file, removed at start-up
and by the fill itself).

The package is the one composition root, a module per concept:

    daemon.py        Daemon: start (store, listeners, background work) and a bounded stop
    parts.py         Parts: the object graph, built from the Config in one place
    upstreams.py     each registry's client (TLS, egress, sessions, credentials, limits)
    applications.py  the aiohttp applications of the mirror, admin and peer listeners
    listeners.py     runners and bound sockets, and their shutdown by a deadline
    gauges.py        gauges read at scrape time
    serve.py         serve(): run until SIGTERM/SIGINT
"""

from __future__ import annotations

from cachesvc.app.daemon import Daemon
from cachesvc.app.parts import Parts
from cachesvc.app.serve import serve

__all__ = ["Daemon", "Parts", "serve"]
