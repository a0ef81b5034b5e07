"""Policy at the node: which clients, which repositories, which signed images.

Plain values in and out, no HTTP: the mirror's policy step fetches, these modules decide.

- :mod:`.clients`: client CIDR allow list (``clients.allow``).
- :mod:`.repositories`: repository patterns (``registries.<name>.allow``).
- :mod:`.keys`: cosign public keys from PEM (``registries.<name>.verify.keys``).
- :mod:`.signature`: verify one digest from its fetched artifacts, built on
  :mod:`.simplesigning` (``sha256-<hex>.sig``), :mod:`.referrers` and :mod:`.bundle`
  (sigstore bundle v0.3), reading artifacts through :mod:`.payload` (the OCI parts with
  the project's one model, :mod:`cachesvc.oci.image`).
- :mod:`.verdict`: the outcome and its reasons; :mod:`.verdictcache` remembers it per
  (registry, repository, digest); :mod:`.coverage`: the platform manifests a signed index
  covers.
"""

from .coverage import covered_manifests
from .keys import PublicKey, PublicKeyError, load_public_key, read_key_file
from .signature import Evidence, blobs_to_fetch, verify_image
from .verdict import Reason, Verdict
from .verdictcache import VerdictCache, keyring_id

__all__ = [
    "Evidence",
    "PublicKey",
    "PublicKeyError",
    "Reason",
    "Verdict",
    "VerdictCache",
    "blobs_to_fetch",
    "covered_manifests",
    "keyring_id",
    "load_public_key",
    "read_key_file",
    "verify_image",
]
