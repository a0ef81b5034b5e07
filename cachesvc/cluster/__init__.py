"""Cluster mode: the pieces every node computes alike, without a coordinator.

- :mod:`~cachesvc.config.cluster`: the ``cluster:`` configuration (``parse_cluster``).
- :mod:`~cachesvc.config.peeraddress`: ``PeerAddress``, a member's identity.
- :mod:`~cachesvc.cluster.membership`: the member set, from a static list or DNS.
- :mod:`~cachesvc.cluster.ranking`: rendezvous hashing, the owner and fallback order of a key.
- :mod:`~cachesvc.cluster.peerhealth`: which peers are blocked or unreachable right now.

These modules import only the standard library, dnspython and :mod:`cachesvc.errors`; the
daemon wires them together (DESIGN.md, "Cluster mode, in one paragraph").
"""
