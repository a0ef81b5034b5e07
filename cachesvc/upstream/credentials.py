"""Upstream credentials from a Docker ``config.json``, reloaded when the file changes.

The file is what a ``kubernetes.io/dockerconfigjson`` Secret mounts::

    {"auths": {"ccr.volces.com": {"auth": "<base64 user:password>"},
               "https://index.docker.io/v1/": {"username": "u", "password": "p"},
               "ghcr.io": {"identitytoken": "<OAuth2 refresh token>"}}}

Keys are normalised to ``host[:port]`` (scheme and path dropped; Docker Hub's historic
names map to ``docker.io``). A lookup tries the endpoint's host first, then the
registry name, so a CDN endpoint may carry credentials of its own. Which endpoints may
use the registry name's entry is ``auth.Authorizer``'s rule (containerd keys credentials
per host: a CDN endpoint gets none of the origin's).

Rotation: every lookup ``stat``s the file (through symlinks). kubelet swaps a ``..data``
symlink, editors rename a new file into place, others overwrite in place: each changes
the inode, size or mtime, and a changed file is read again. A write within the same
mtime tick as our read is caught by re-reading while the file's mtime is "racy" (close
to our last read), the way git treats racily clean index entries. A file that does not
parse keeps the last good credentials and logs one error per bad version.

Why a stat per upstream request rather than a timer: "the next upstream request uses
the new credentials" holds exactly, and a stat of a tmpfs file costs microseconds on a
path that is about to make a network round trip anyway.

Secrets never leave this module in text form: ``Credential.__repr__`` redacts them and
log lines name only the file, registries and usernames.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import logging
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from cachesvc.errors import CredentialsFileError
from cachesvc.metrics import Metrics
from cachesvc.smallfile import read_small_file

log = logging.getLogger("cachesvc.credentials")

# Docker Hub is written many ways in config.json files.
_ALIASES = {
    "index.docker.io": "docker.io",
    "registry-1.docker.io": "docker.io",
    "registry.hub.docker.com": "docker.io",
}
# A file modified this close to our read of it is read again on the next lookup.
_RACY_SECONDS = 2.0


@dataclass(frozen=True, slots=True)
class Credential:
    """One registry's credentials: a username and password, or an identity token."""

    username: str = field(default="")
    password: str = field(default="", repr=False)
    identity_token: str = field(default="", repr=False)

    def __repr__(self) -> str:
        kind = "identitytoken" if self.identity_token else "password"
        return f"Credential(username={self.username!r}, {kind}=<redacted>)"

    def basic(self) -> str:
        """The ``Authorization: Basic`` value for username and password."""
        raw = f"{self.username}:{self.password}".encode()
        return "Basic " + base64.b64encode(raw).decode("ascii")

    @property
    def fingerprint(self) -> str:
        """A short, non-reversible id (to key token caches; never the secret itself)."""
        material = "\0".join((self.username, self.password, self.identity_token)).encode()
        return hashlib.sha256(material).hexdigest()[:16]


def normalize_registry(key: str) -> str:
    """``https://index.docker.io/v1/`` -> ``docker.io``; ``ghcr.io/org`` -> ``ghcr.io``."""
    text = key.strip()
    if "://" in text:
        text = urlsplit(text).netloc
    host = text.split("/", 1)[0].lower()
    return _ALIASES.get(host, host)


def parse_docker_config(data: bytes) -> dict[str, Credential]:
    """The ``auths`` of a config.json as ``{registry: Credential}``."""
    try:
        doc = json.loads(data)
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise CredentialsFileError("not valid JSON (half-written?)") from None
    if not isinstance(doc, dict):
        raise CredentialsFileError("top level is not a JSON object")
    auths = doc.get("auths", {})
    if not isinstance(auths, dict):
        raise CredentialsFileError("'auths' is not an object")
    result: dict[str, Credential] = {}
    for key, entry in auths.items():
        registry = normalize_registry(str(key))
        if not isinstance(entry, dict) or not registry:
            raise CredentialsFileError(f"auths entry for {registry or key!r} is not an object")
        if not any(entry.get(k) for k in ("auth", "username", "password", "identitytoken")):
            # `docker login` with a credential helper writes `{}`: nothing for us, not an error.
            continue
        result[registry] = _credential(registry, entry)
    return result


def _credential(registry: str, entry: Mapping[str, object]) -> Credential:
    fields = {name: entry.get(name) or "" for name in ("username", "password", "identitytoken")}
    auth = entry.get("auth") or ""
    if not all(isinstance(v, str) for v in (*fields.values(), auth)):
        raise CredentialsFileError(f"auths.{registry} has non-string fields")
    username, password, token = (str(fields[n]) for n in ("username", "password", "identitytoken"))
    if auth:
        try:
            decoded = base64.b64decode(str(auth), validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            raise CredentialsFileError(f"auths.{registry}.auth is not base64") from None
        if ":" not in decoded:
            raise CredentialsFileError(f"auths.{registry}.auth is not base64 'user:password'")
        username, password = decoded.split(":", 1)
    if not token and not (username and password):
        raise CredentialsFileError(
            f"auths.{registry} has neither auth, username and password, nor identitytoken"
        )
    return Credential(username, password, token)


class Credentials:
    """The current credentials of every registry, following the file as it changes."""

    def __init__(self, path: Path | None, metrics: Metrics) -> None:
        self.path = path
        self._metrics = metrics
        self._by_registry: dict[str, Credential] = {}
        self._signature: tuple[int, ...] | None = None
        self._content_hash: str | None = None
        self._read_at = 0.0
        self._bad_hash: str | None = None
        self._listeners: list[Callable[[set[str]], None]] = []
        if path is not None:
            self._refresh()

    def on_change(self, listener: Callable[[set[str]], None]) -> None:
        """Call ``listener(registries whose credentials changed)`` after each reload."""
        self._listeners.append(listener)

    def lookup(self, registry: str, endpoint_host: str | None = None) -> Credential | None:
        """Credentials for an endpoint host, else the registry name; None: anonymous."""
        if self.path is not None:
            self._refresh()
        if endpoint_host is not None:
            found = self._by_registry.get(normalize_registry(endpoint_host))
            if found is not None:
                return found
        return self._by_registry.get(normalize_registry(registry))

    def for_host(self, endpoint_host: str) -> Credential | None:
        """The host's own ``auths`` entry only (no fallback to a registry name)."""
        if self.path is not None:
            self._refresh()
        return self._by_registry.get(normalize_registry(endpoint_host))

    def _refresh(self) -> None:
        assert self.path is not None
        try:
            st = os.stat(self.path)
        except OSError as exc:
            self._report_bad(f"missing:{exc.errno}", f"cannot read it: {exc.strerror}")
            return
        signature = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
        racy = st.st_mtime_ns / 1e9 >= self._read_at - _RACY_SECONDS
        if signature == self._signature and not racy:
            return
        try:
            data = read_small_file(self.path)
        except OSError as exc:
            self._report_bad(f"unreadable:{exc.errno}", f"cannot read it: {exc.strerror}")
            return
        self._read_at = time.time()
        digest = hashlib.sha256(data).hexdigest()
        if digest == self._content_hash:
            self._signature, self._bad_hash = signature, None
            return
        try:
            parsed = parse_docker_config(data)
        except CredentialsFileError as exc:
            self._report_bad(digest, str(exc))
            return
        changed = {
            r
            for r in set(parsed) | set(self._by_registry)
            if parsed.get(r) != self._by_registry.get(r)
        }
        first = self._content_hash is None
        self._by_registry = parsed
        self._signature, self._content_hash, self._bad_hash = signature, digest, None
        self._metrics.credential_reloads.labels("ok").inc()
        log.info(
            "%s credentials from %s",
            "loaded" if first else "reloaded",
            self.path,
            extra={"fields": {"registries": sorted(parsed), "changed": sorted(changed)}},
        )
        for listener in self._listeners:
            listener(changed)

    def _report_bad(self, version: str, reason: str) -> None:
        if version == self._bad_hash:
            return  # one error per bad version of the file, not one per request
        self._bad_hash = version
        self._metrics.credential_reloads.labels("error").inc()
        keeping = (
            "keeping the last good credentials"
            if self._content_hash is not None
            else "no credentials loaded yet: upstream requests are anonymous"
        )
        log.error("credentials file %s is unusable (%s); %s", self.path, reason, keeping)
