"""Helpers that drive the real peers of cachesvc on loopback only.

The peers are the Debian builds of the CNCF distribution registry (``docker-registry``),
``containerd`` + ``ctr`` and ``skopeo``. Every helper binds to 127.0.0.1, picks free ports,
keeps its state under a caller-provided directory, and stops what it started when its context
manager exits. Only :mod:`tests.peers.require` imports pytest; the rest is usable from
benchmarks and scripts as well.
"""
