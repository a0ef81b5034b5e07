"""cosign-format signature artifacts, built with real keys and pushed with skopeo.

No ``cosign`` binary exists in Debian or on PyPI, so these builders write, byte for byte in
structure, what cosign 3 writes (read from sigstore/cosign ``pkg/oci/remote/write.go``,
``pkg/oci/static``, ``cmd/cosign/cli/sign/sign.go`` and sigstore-go ``pkg/sign``)::

    simple signing   <repo>:sha256-<hex>.sig ─▶ OCI manifest, empty image config,
                     one simplesigning layer per signature, the signature in the layer
                     annotation dev.cosignproject.cosign/signature (base64 DER)
    sigstore bundle  referrer manifest (artifactType = bundle v0.3, config = the OCI empty
                     descriptor, subject = the image) ─▶ bundle JSON with a DSSE envelope
                     over an in-toto statement; found through the referrers tag fallback
                     <repo>:sha256-<hex>, an image index of referrer descriptors

Each artifact is an :class:`Artifact` (manifest bytes plus blobs) usable in memory by unit
tests, and writable into an OCI layout (:func:`write_artifact`) for :func:`push_artifact`,
which copies it into the real registry with ``skopeo copy --preserve-digests``.
"""

from __future__ import annotations

import base64
import hashlib
import json
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa

from .images import (
    OCI_CONFIG,
    OCI_INDEX,
    OCI_MANIFEST,
    REF_NAME,
    LayerSpec,
    OCIImage,
    build_image,
    push,
)
from .registry import DistributionRegistry

__all__ = [
    "BUNDLE_V03",
    "COSIGN_SIGN_PREDICATE",
    "SIGNATURE_ANNOTATION",
    "SIMPLE_SIGNING",
    "Artifact",
    "PrivateKey",
    "bundle_json",
    "bundle_referrer",
    "image",
    "key_hint",
    "public_pem",
    "push_artifact",
    "push_referrers_index",
    "referrers_index",
    "sign_bundle",
    "sign_bytes",
    "sign_simple",
    "signature_manifest",
    "simple_signing_payload",
    "statement",
    "write_artifact",
]

SIMPLE_SIGNING = "application/vnd.dev.cosign.simplesigning.v1+json"
SIGNATURE_ANNOTATION = "dev.cosignproject.cosign/signature"
BUNDLE_V03 = "application/vnd.dev.sigstore.bundle.v0.3+json"
COSIGN_SIGN_PREDICATE = "https://sigstore.dev/cosign/sign/v1"
OCI_EMPTY = "application/vnd.oci.empty.v1+json"
INTOTO = "application/vnd.in-toto+json"

PrivateKey = ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey | rsa.RSAPrivateKey


def _sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _go_json(obj: object) -> bytes:
    """JSON as Go's encoding/json writes it: compact, fields in the order given."""
    return json.dumps(obj, separators=(",", ":")).encode()


def public_pem(key: PrivateKey) -> bytes:
    """The PKIX ``PUBLIC KEY`` PEM block, as in ``cosign.pub``."""
    return key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def key_hint(key: PrivateKey) -> str:
    """cosign's key hint: base64(SHA-256(DER SubjectPublicKeyInfo))."""
    der = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return base64.b64encode(hashlib.sha256(der).digest()).decode()


def sign_bytes(key: PrivateKey, data: bytes) -> bytes:
    """A signature as sigstore's default signers make it (ECDSA: DER, hash by curve)."""
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return key.sign(data)
    if isinstance(key, rsa.RSAPrivateKey):
        return key.sign(data, padding.PKCS1v15(), hashes.SHA256())
    by_curve = {256: hashes.SHA256(), 384: hashes.SHA384(), 521: hashes.SHA512()}
    return key.sign(data, ec.ECDSA(by_curve[key.curve.key_size]))


@dataclass(frozen=True, slots=True)
class Artifact:
    """A manifest or index plus the blobs it references (children are separate artifacts)."""

    manifest: bytes
    media_type: str
    blobs: Mapping[str, bytes] = field(default_factory=dict)
    children: tuple[Artifact, ...] = ()

    @property
    def digest(self) -> str:
        """Digest of the manifest bytes."""
        return _sha256(self.manifest)

    def descriptor(self, **extra: object) -> dict[str, object]:
        """This manifest's descriptor (``extra`` adds fields such as ``artifactType``)."""
        return {
            "mediaType": self.media_type,
            "size": len(self.manifest),
            "digest": self.digest,
            **extra,
        }

    def all_blobs(self) -> dict[str, bytes]:
        """Every blob and child manifest below this one, by digest (for in-memory tests)."""
        out = dict(self.blobs)
        for child in self.children:
            out[child.digest] = child.manifest
            out.update(child.all_blobs())
        return out


def simple_signing_payload(digest: str, reference: str) -> bytes:
    """cosign's simple-signing payload for ``digest`` pushed as ``reference`` (repo)."""
    return _go_json(
        {
            "critical": {
                "identity": {"docker-reference": reference},
                "image": {"docker-manifest-digest": digest},
                "type": "cosign container image signature",
            },
            "optional": None,
        }
    )


def signature_manifest(layers: Sequence[tuple[bytes, str]]) -> Artifact:
    """The ``sha256-<hex>.sig`` manifest: one simplesigning layer per (payload, base64 sig).

    The config is the empty image config go-containerregistry writes for cosign.
    """
    blobs = {_sha256(payload): payload for payload, _ in layers}
    config = _go_json(
        {
            "architecture": "",
            "created": "0001-01-01T00:00:00Z",
            "history": [{"created": "0001-01-01T00:00:00Z"} for _ in layers],
            "os": "",
            "rootfs": {"type": "layers", "diff_ids": [_sha256(p) for p, _ in layers]},
            "config": {},
        }
    )
    blobs[_sha256(config)] = config
    manifest = _go_json(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {"mediaType": OCI_CONFIG, "size": len(config), "digest": _sha256(config)},
            "layers": [
                {
                    "mediaType": SIMPLE_SIGNING,
                    "size": len(payload),
                    "digest": _sha256(payload),
                    "annotations": {SIGNATURE_ANNOTATION: signature},
                }
                for payload, signature in layers
            ],
        }
    )
    return Artifact(manifest, OCI_MANIFEST, blobs)


def statement(digest: str, predicate_type: str = COSIGN_SIGN_PREDICATE) -> bytes:
    """The in-toto statement ``cosign sign`` signs (protojson field order)."""
    algorithm, _, hexdigest = digest.partition(":")
    return _go_json(
        {
            "_type": "https://in-toto.io/Statement/v1",
            "subject": [{"digest": {algorithm: hexdigest}}],
            "predicateType": predicate_type,
            "predicate": {},
        }
    )


def bundle_json(
    payload: bytes, key: PrivateKey, *, signature: bytes | None = None, hint: str | None = None
) -> bytes:
    """A v0.3 bundle: ``key``'s DSSE signature over ``payload`` (an in-toto statement).

    ``signature`` replaces the real signature (to tamper); ``hint`` the key hint.
    """
    pae = b"DSSEv1 %d %b %d %b" % (len(INTOTO), INTOTO.encode(), len(payload), payload)
    sig = signature if signature is not None else sign_bytes(key, pae)
    return _go_json(
        {
            "mediaType": BUNDLE_V03,
            "verificationMaterial": {"publicKey": {"hint": hint or key_hint(key)}},
            "dsseEnvelope": {
                "payload": base64.b64encode(payload).decode(),
                "payloadType": INTOTO,
                "signatures": [{"sig": base64.b64encode(sig).decode()}],
            },
        }
    )


def bundle_referrer(subject: Mapping[str, object], bundle: bytes) -> Artifact:
    """The referrer manifest cosign pushes for a bundle (``subject``: the image descriptor)."""
    empty = b"{}"
    manifest = _go_json(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {
                "mediaType": OCI_EMPTY,
                "size": len(empty),
                "digest": _sha256(empty),
                "artifactType": BUNDLE_V03,
            },
            "layers": [{"mediaType": BUNDLE_V03, "size": len(bundle), "digest": _sha256(bundle)}],
            "annotations": {
                "dev.sigstore.bundle.content": "dsse-envelope",
                "dev.sigstore.bundle.predicateType": COSIGN_SIGN_PREDICATE,
                "org.opencontainers.image.created": "2026-12-01T00:00:00Z",
            },
            "subject": dict(subject),
            "artifactType": BUNDLE_V03,
        }
    )
    return Artifact(manifest, OCI_MANIFEST, {_sha256(empty): empty, _sha256(bundle): bundle})


def referrers_index(referrers: Sequence[Artifact]) -> Artifact:
    """The referrers tag-fallback index listing ``referrers`` (with their artifactType)."""
    entries = []
    for referrer in referrers:
        parsed = json.loads(referrer.manifest)
        extra: dict[str, object] = {"artifactType": parsed.get("artifactType", "")}
        if parsed.get("annotations"):
            extra = {"annotations": parsed["annotations"], **extra}
        entries.append(referrer.descriptor(**extra))
    index = _go_json({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": entries})
    return Artifact(index, OCI_INDEX, {}, tuple(referrers))


def write_artifact(layout: Path, tag: str, artifact: Artifact) -> None:
    """Write ``artifact`` (blobs, children, manifest) into the OCI layout under ``tag``."""
    blobs_dir = layout / "blobs" / "sha256"
    blobs_dir.mkdir(parents=True, exist_ok=True)
    for digest, data in {**artifact.all_blobs(), artifact.digest: artifact.manifest}.items():
        (blobs_dir / digest.partition(":")[2]).write_bytes(data)
    index_path = layout / "index.json"
    index = json.loads(index_path.read_text())
    index["manifests"] = [
        m for m in index["manifests"] if m.get("annotations", {}).get(REF_NAME) != tag
    ] + [artifact.descriptor(annotations={REF_NAME: tag})]
    index_path.write_text(json.dumps(index, indent=2))


def push_artifact(layout: Path, tag: str, artifact: Artifact, dest: str) -> str:
    """Write ``artifact`` under ``tag`` in ``layout`` and copy it to ``dest`` (repo:tag)."""
    write_artifact(layout, tag, artifact)
    return push(layout, tag, dest)


def push_referrers_index(
    layout: Path, index: Artifact, registry_url: str, repo: str, tag: str
) -> None:
    """Push a referrers tag-fallback ``index`` whose entries carry ``artifactType``.

    skopeo 1.9 (containers/image 5.23) re-serialises an index with image-spec 1.0 types,
    which drop ``artifactType``, and ``--preserve-digests`` then refuses the copy. So each
    referrer is copied with skopeo (manifest and blobs), and the index itself, which
    references no blobs, is PUT as is, as cosign's go-containerregistry does.
    """
    for child in index.children:
        push_artifact(layout, tag, child, f"{urlsplit(registry_url).netloc}/{repo}:{tag}")
    request = urllib.request.Request(  # noqa: S310  # an http URL of the loopback registry
        f"{registry_url}/v2/{repo}/manifests/{tag}",
        data=index.manifest,
        method="PUT",
        headers={"Content-Type": index.media_type},
    )
    with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310  # loopback registry
        if response.headers.get("Docker-Content-Digest") != index.digest:
            raise RuntimeError(f"registry stored the index as {response.headers}")


# -- signing images in the registry, as `cosign sign --key` would -----------------------


def sign_simple(
    layout: Path,
    reg: DistributionRegistry,
    repo: str,
    image: OCIImage,
    signer: PrivateKey,
    *,
    claim: str | None = None,
    tamper: bool = False,
) -> None:
    """Push a .sig for ``image`` (claiming ``claim``, default its digest) signed by ``signer``."""
    payload = simple_signing_payload(claim or image.digest, f"{reg.host_port}/{repo}")
    signature = bytearray(sign_bytes(signer, payload))
    if tamper:
        signature[10] ^= 0x01  # inside r: still well-formed DER
    encoded = base64.b64encode(bytes(signature)).decode()
    tag = image.digest.replace(":", "-") + ".sig"  # cosign's signature tag
    artifact = signature_manifest([(payload, encoded)])
    push_artifact(layout, tag, artifact, reg.ref(repo, tag))


def sign_bundle(
    layout: Path,
    reg: DistributionRegistry,
    repo: str,
    image: OCIImage,
    signer: PrivateKey,
    *,
    tamper: bool = False,
) -> None:
    """Push a bundle referrer for ``image`` and the referrers tag-fallback index."""
    signed = statement(image.digest)
    bad = sign_bytes(signer, b"something else") if tamper else None
    data = bundle_json(signed, signer, signature=bad)
    size = (image.index or image.single.manifest).size
    subject = {"mediaType": image.media_type, "size": size, "digest": image.digest}
    index = referrers_index([bundle_referrer(subject, data)])
    fallback = image.digest.replace(":", "-")  # the referrers tag fallback
    push_referrers_index(layout, index, reg.url, repo, fallback)


def image(layout: Path, reg: DistributionRegistry, repo: str, tag: str, seed: int) -> OCIImage:
    """A one-layer image built from ``seed`` and pushed as ``repo:tag``."""
    built = build_image(layout, tag, [LayerSpec(2048, seed=seed)])
    push(built, None, reg.ref(repo, tag))
    return built
