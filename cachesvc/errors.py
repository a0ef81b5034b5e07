"""The one exception root of cachesvc and its hierarchy.

::

    CachesvcError                      anything cachesvc raises on purpose
    ├── ConfigError                    bad configuration file, key or CLI value
    │   └── PublicKeyError             a policy key file is unusable (policy/keys.py)
    ├── UsageError                     a bad command-line value (exit status 2)
    ├── ListenError                    a listener cannot be bound (port in use, ...)
    ├── CredentialsFileError           the credentials file is no usable config.json
    ├── AdminUnavailable               the CLI cannot use the admin API (exit ``status``)
    ├── StoreError                     the storage root cannot be used
    ├── ArtifactError                  a signature artifact cannot be read (policy/payload.py)
    ├── LookupFailed                   cluster members cannot be resolved (cluster/membership.py)
    ├── AdminError                     an /admin/v1 request cannot be done (400)
    │   ├── NotFound                   no such job, pin or cached image (404)
    │   └── Conflict                   e.g. purging a pinned image (409)
    └── RegistryError                  an answer for a client, in OCI error terms
        ├── NameInvalid, NameUnknown, DigestInvalid, TagInvalid
        ├── BlobUnknown, ManifestUnknown, ManifestInvalid
        ├── RangeNotSatisfiable        416 with the blob's size
        ├── Unsupported
        ├── StorageUnavailable         503: the node's disk failed (full, EIO); retry
        ├── PolicyDenied               403 DENIED by the node's policy (``rule``: clients,
        │                              allow or verify); never upstream's answer
        └── UpstreamError              upstream failed; decided before any status line
            ├── UpstreamUnreachable    502: connection refused, DNS, TLS, 5xx
            ├── UpstreamTimeout        504: connect, first byte or stall timeout
            ├── UpstreamUnauthorized   401 from upstream: the mirror's credentials
            ├── UpstreamDenied         403 from upstream
            ├── UpstreamRateLimited    429 from upstream or our own limiter (own_limit)
            └── DigestMismatch         upstream bytes do not match their digest

``aiohttp.ClientError`` and ``OSError`` are translated into these where they arise
(``upstream/``, ``store/``); handlers only ever map ``RegistryError`` to a response.
Subclasses defined outside this module say where (policy, cluster).
"""

from __future__ import annotations

import math


class CachesvcError(Exception):
    """Root of every exception cachesvc raises on purpose."""


class ConfigError(CachesvcError):
    """The configuration is invalid; ``key`` names the offending key path."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(f"{key}: {message}" if key else message)
        self.key = key
        self.message = message


class UsageError(CachesvcError):
    """A command-line value is invalid (exit status 2)."""


class ListenError(CachesvcError):
    """A listener could not be bound (port in use, address not on this host)."""


class CredentialsFileError(CachesvcError):
    """The file does not hold a usable Docker config.json (the message names no secret)."""


class AdminUnavailable(CachesvcError):
    """The admin API cannot be used; ``status`` is the exit status the CLI ends with.

    The default 3 is ``cachesvc.ops.adminclient.EXIT_ADMIN`` (the admin API is unusable).
    """

    def __init__(self, message: str, status: int = 3) -> None:
        super().__init__(message)
        self.status = status


class StoreError(CachesvcError):
    """The storage root cannot be used (permissions, disk full, not a directory)."""


class AdminError(CachesvcError):
    """An admin API request that cannot be carried out; ``status`` is its HTTP status."""

    status = 400


class NotFound(AdminError):
    status = 404


class Conflict(AdminError):
    status = 409


class RegistryError(CachesvcError):
    """An error a client sees as an OCI error body ``{"errors": [...]}``."""

    code = "UNKNOWN"
    status = 500

    def __init__(self, message: str, *, detail: object = None) -> None:
        super().__init__(message)
        self.message = message
        self.detail = detail

    def headers(self) -> dict[str, str]:
        """Extra response headers (for example ``Retry-After``)."""
        return {}


class NameInvalid(RegistryError):
    code = "NAME_INVALID"
    status = 400


class NameUnknown(RegistryError):
    code = "NAME_UNKNOWN"
    status = 404


class TagInvalid(RegistryError):
    code = "TAG_INVALID"
    status = 400


class DigestInvalid(RegistryError):
    code = "DIGEST_INVALID"
    status = 400


class BlobUnknown(RegistryError):
    code = "BLOB_UNKNOWN"
    status = 404


class ManifestUnknown(RegistryError):
    code = "MANIFEST_UNKNOWN"
    status = 404


class ManifestInvalid(RegistryError):
    code = "MANIFEST_INVALID"
    status = 502


class Unsupported(RegistryError):
    code = "UNSUPPORTED"
    status = 405


class StorageUnavailable(RegistryError):
    """The store could not read or write what this request needs (a full disk, EIO)."""

    code = "UNAVAILABLE"
    status = 503

    def headers(self) -> dict[str, str]:
        return {"Retry-After": "1"}


class RangeNotSatisfiable(RegistryError):
    code = "RANGE_INVALID"
    status = 416

    def __init__(self, message: str, *, size: int) -> None:
        super().__init__(message)
        self.size = size

    def headers(self) -> dict[str, str]:
        return {"Content-Range": f"bytes */{self.size}"}


class PolicyDenied(RegistryError):
    """A request this node's policy refuses (``rule``: ``clients``, ``allow``, ``verify``).

    Raised before any upstream request for ``clients`` and ``allow``, and before anything
    is stored for ``verify``; the access log records ``rule`` as its ``policy`` field.
    """

    code = "DENIED"
    status = 403

    def __init__(self, rule: str, message: str) -> None:
        super().__init__(message)
        self.rule = rule


class UpstreamError(RegistryError):
    """Upstream could not give us what the client asked for."""

    code = "UNAVAILABLE"
    status = 502


class UpstreamUnreachable(UpstreamError):
    status = 502


class UpstreamTimeout(UpstreamError):
    status = 504


class UpstreamUnauthorized(UpstreamError):
    code = "UNAUTHORIZED"
    status = 401


class UpstreamDenied(UpstreamError):
    code = "DENIED"
    status = 403


class UpstreamRateLimited(UpstreamError):
    code = "TOOMANYREQUESTS"
    status = 429

    def __init__(self, message: str, *, retry_after: float = 1.0, own_limit: bool = False) -> None:
        super().__init__(message)
        self.retry_after = max(1.0, retry_after)
        self.own_limit = own_limit  # True: cachesvc's own limiter refused, not upstream

    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(math.ceil(self.retry_after))}


class DigestMismatch(UpstreamError):
    code = "DIGEST_INVALID"
    status = 502
