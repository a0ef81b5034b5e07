"""Cosign public keys: loaded from PEM, each able to check one signature over some bytes.

cosign writes ``cosign.pub`` as a PKIX ``PUBLIC KEY`` PEM block. The key type fixes the
algorithm, as in sigstore's defaults, so a signature never says which one it used:

============  ==========================================
key           signature
============  ==========================================
ECDSA P-256   ECDSA with SHA-256 (cosign's default key)
ECDSA P-384   ECDSA with SHA-384
ECDSA P-521   ECDSA with SHA-512
Ed25519       pure Ed25519 over the bytes
RSA >= 2048   RSASSA-PKCS1-v1_5 with SHA-256
============  ==========================================

ECDSA signatures are accepted DER-encoded (what cosign writes) or as raw ``r || s``.
A key's ``hint`` is base64(SHA-256(DER SubjectPublicKeyInfo)), the value cosign puts in a
bundle's ``verificationMaterial.publicKey.hint``.
"""

from __future__ import annotations

import base64
import hashlib
import os
import stat
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from cachesvc.errors import ConfigError

__all__ = ["MAX_KEY_FILE_BYTES", "PublicKey", "PublicKeyError", "load_public_key", "read_key_file"]

MAX_KEY_FILE_BYTES = 64 * 1024
"""A PEM public key is under 2 KiB even for RSA-8192; anything far larger is not one."""

_EC_HASHES: dict[str, type[hashes.HashAlgorithm]] = {
    "secp256r1": hashes.SHA256,
    "secp384r1": hashes.SHA384,
    "secp521r1": hashes.SHA512,
}
_MIN_RSA_BITS = 2048

_Verifier = ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey | rsa.RSAPublicKey


class PublicKeyError(ConfigError):
    """A key file that cannot be used: unreadable, not PEM, or a key type cosign does not sign
    with. ``key`` is the configuration key path that named the file."""


@dataclass(frozen=True, slots=True)
class PublicKey:
    """One configured verification key; ``name`` is where it came from (its file path)."""

    name: str
    key: _Verifier
    hint: str
    """base64(SHA-256(DER SPKI)): cosign's key hint in sigstore bundles."""

    @property
    def fingerprint(self) -> str:
        """``sha256:<hex>`` of the DER SPKI, for logs and verdicts (the hint, in hex)."""
        return "sha256:" + base64.b64decode(self.hint).hex()

    @property
    def algorithm(self) -> str:
        """The key type for messages: ``ecdsa-p256``, ``ed25519``, ``rsa-3072``."""
        if isinstance(self.key, ec.EllipticCurvePublicKey):
            return "ecdsa-p" + str(self.key.curve.key_size)
        if isinstance(self.key, rsa.RSAPublicKey):
            return f"rsa-{self.key.key_size}"
        return "ed25519"

    def verify(self, signature: bytes, data: bytes) -> bool:
        """Whether ``signature`` is this key's signature over exactly ``data``."""
        key = self.key
        try:
            if isinstance(key, ed25519.Ed25519PublicKey):
                key.verify(signature, data)
                return True
            if isinstance(key, rsa.RSAPublicKey):
                key.verify(signature, data, padding.PKCS1v15(), hashes.SHA256())
                return True
        except (InvalidSignature, ValueError):
            return False
        algorithm = ec.ECDSA(_EC_HASHES[key.curve.name]())
        for der in _ecdsa_candidates(signature, key.curve.key_size):
            try:
                key.verify(der, data, algorithm)
            except (InvalidSignature, ValueError):
                continue
            return True
        return False


def _ecdsa_candidates(signature: bytes, curve_bits: int) -> list[bytes]:
    """The DER encodings ``signature`` may stand for: itself, and raw ``r || s`` re-encoded."""
    candidates = [signature]
    width = (curve_bits + 7) // 8
    if len(signature) == 2 * width:
        r = int.from_bytes(signature[:width], "big")
        s = int.from_bytes(signature[width:], "big")
        candidates.append(encode_dss_signature(r, s))
    return candidates


def load_public_key(pem: bytes, *, name: str, config_key: str = "") -> PublicKey:
    """Parse one PEM public key; ``PublicKeyError`` says why one is unusable."""
    if b"-----BEGIN CERTIFICATE-----" in pem and b"PUBLIC KEY-----" not in pem:
        raise PublicKeyError(config_key, f"{name}: a certificate; give the PEM public key")
    try:
        key = serialization.load_pem_public_key(pem)
    except (ValueError, TypeError) as exc:
        raise PublicKeyError(config_key, f"{name}: not a PEM public key ({exc})") from exc
    if isinstance(key, ec.EllipticCurvePublicKey):
        if key.curve.name not in _EC_HASHES:
            raise PublicKeyError(
                config_key, f"{name}: ECDSA curve {key.curve.name} (use P-256, P-384 or P-521)"
            )
    elif isinstance(key, rsa.RSAPublicKey):
        if key.key_size < _MIN_RSA_BITS:
            raise PublicKeyError(config_key, f"{name}: RSA key of {key.key_size} bits (< 2048)")
    elif not isinstance(key, ed25519.Ed25519PublicKey):
        raise PublicKeyError(
            config_key,
            f"{name}: {type(key).__name__} keys are not supported (ECDSA, Ed25519 or RSA)",
        )
    der = key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    hint = base64.b64encode(hashlib.sha256(der).digest()).decode()
    return PublicKey(name=name, key=key, hint=hint)


def read_key_file(path: Path, *, config_key: str = "") -> PublicKey:
    """Load the key in ``path``: a regular file of at most MAX_KEY_FILE_BYTES (a FIFO or a
    device named by mistake must not block or flood the daemon)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise PublicKeyError(config_key, f"{path}: not a regular file")
            pem = os.read(fd, MAX_KEY_FILE_BYTES + 1)
        finally:
            os.close(fd)
    except OSError as exc:
        raise PublicKeyError(config_key, f"{path}: cannot read ({exc.strerror})") from exc
    if len(pem) > MAX_KEY_FILE_BYTES:
        raise PublicKeyError(config_key, f"{path}: larger than {MAX_KEY_FILE_BYTES} bytes")
    return load_public_key(pem, name=str(path), config_key=config_key)
