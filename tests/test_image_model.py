"""The OCI image model (cachesvc.oci.image): real manifests parse, hostile ones are a clear
ManifestInvalid and never another exception."""

from __future__ import annotations

import hashlib
import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cachesvc.errors import ManifestInvalid
from cachesvc.oci import (
    MAX_MANIFEST_BYTES,
    MEDIA_DOCKER_LIST,
    MEDIA_OCI_INDEX,
    MEDIA_OCI_MANIFEST,
    Descriptor,
    Digest,
    Index,
    Manifest,
    Platform,
    config_platform,
    parse_manifest,
)
from cachesvc.oci.image import MAX_DESCRIPTORS

LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"


def digest_of(seed: str) -> str:
    return "sha256:" + hashlib.sha256(seed.encode()).hexdigest()


def descriptor(seed: str, size: int = 10, **extra: Any) -> dict[str, Any]:
    return {"mediaType": LAYER, "digest": digest_of(seed), "size": size, **extra}


def image_manifest(layers: int = 2) -> dict[str, Any]:
    return {
        "schemaVersion": 2,
        "mediaType": MEDIA_OCI_MANIFEST,
        "config": descriptor("config", 5, mediaType="application/vnd.oci.image.config.v1+json"),
        "layers": [descriptor(f"layer{i}", 100 + i) for i in range(layers)],
    }


def index(*platforms: dict[str, str] | None) -> dict[str, Any]:
    entries = []
    for i, platform in enumerate(platforms):
        entry = descriptor(f"child{i}", 500, mediaType=MEDIA_OCI_MANIFEST)
        if platform is not None:
            entry["platform"] = platform
        entries.append(entry)
    return {"schemaVersion": 2, "mediaType": MEDIA_OCI_INDEX, "manifests": entries}


def body(document: object) -> bytes:
    return json.dumps(document).encode()


def test_an_image_manifest_lists_its_config_then_its_layers() -> None:
    parsed = parse_manifest(MEDIA_OCI_MANIFEST, body(image_manifest(3)))
    assert isinstance(parsed, Manifest)
    assert [str(d.digest) for d in parsed.blobs] == [
        digest_of("config"), digest_of("layer0"), digest_of("layer1"), digest_of("layer2")
    ]  # fmt: skip
    assert [d.size for d in parsed.layers] == [100, 101, 102]
    assert parsed.config.media_type == "application/vnd.oci.image.config.v1+json"


def test_an_index_formats_platforms_as_os_arch_variant() -> None:
    doc = index({"os": "linux", "architecture": "arm64", "variant": "v8"},
                {"os": "linux", "architecture": "amd64"},
                {"os": "linux", "architecture": "arm", "variant": ""},
                None)  # fmt: skip
    parsed = parse_manifest(MEDIA_OCI_INDEX, body(doc))
    assert isinstance(parsed, Index)
    assert parsed.platforms() == ["linux/arm64/v8", "linux/amd64", "linux/arm", "unknown"]
    assert parsed.manifests[0].platform == Platform("linux", "arm64", "v8")
    assert parsed.manifests[0].digest == Digest.parse(digest_of("child0"))


@pytest.mark.parametrize("served_as", ["application/json", "text/plain", ""])
def test_the_kind_comes_from_the_body_when_the_media_type_says_nothing(served_as: str) -> None:
    assert isinstance(parse_manifest(served_as, body(index(None))), Index)
    assert isinstance(parse_manifest(served_as, body(image_manifest())), Manifest)
    undeclared = index(None)
    del undeclared["mediaType"]
    assert isinstance(parse_manifest(served_as, body(undeclared)), Index)  # by its shape


def test_a_docker_manifest_list_is_an_index() -> None:
    doc = {**index({"os": "linux", "architecture": "amd64"}), "mediaType": MEDIA_DOCKER_LIST}
    assert isinstance(parse_manifest(MEDIA_DOCKER_LIST, body(doc)), Index)


def test_an_image_config_names_its_platform_or_none() -> None:
    config = {"architecture": "arm64", "os": "linux", "variant": "v8", "rootfs": {}}
    assert config_platform(body(config)) == Platform("linux", "arm64", "v8")
    assert config_platform(body({"rootfs": {}})) is None  # an artifact's config


def mutated(path: tuple[str | int, ...], value: object) -> bytes:
    doc: Any = {"image": image_manifest(), "index": index({"os": "linux", "architecture": "x"})}
    node = doc
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    return body(doc[str(path[0])])


@pytest.mark.parametrize(
    ("path", "value", "message"),
    [
        (("image", "layers", 1, "size"), -1, "layers[1].size: expected a whole number >= 0"),
        (("image", "layers", 1, "size"), "10", "layers[1].size: expected a whole number >= 0"),
        (("image", "layers", 1, "size"), True, "layers[1].size: expected a whole number >= 0"),
        (("image", "layers", 0, "size"), 1.5, "layers[0].size: expected a whole number >= 0"),
        (("image", "layers", 0, "digest"), 7, "layers[0].digest: expected a digest string"),
        (("image", "layers", 0, "digest"), None, "layers[0]: has no digest"),
        (("image", "layers", 0, "digest"), "sha256:abc", "layers[0].digest: invalid sha256"),
        (("image", "layers", 0, "digest"), "../../etc", "layers[0].digest: invalid digest"),
        (("image", "layers", 0, "mediaType"), ["x"], "layers[0].mediaType: expected a media"),
        (("image", "layers", 0), "sha256:x", "layers[0]: expected a descriptor object"),
        (("image", "layers"), {"0": {}}, "layers: expected a list"),
        (("image", "config"), None, "config: expected a descriptor object"),
        (("image", "mediaType"), 3, "mediaType: expected a media type string"),
        (("index", "manifests"), None, "manifests: expected a list"),
        (("index", "manifests", 0, "platform"), "linux/amd64", "manifests[0].platform: expected"),
        (("index", "manifests", 0, "platform", "os"), 1, "manifests[0].platform.os: expected"),
        (("index", "manifests", 0, "platform", "architecture"), "a/b",
         "manifests[0].platform.architecture: expected"),
        (("index", "manifests", 0, "platform", "variant"), "v" * 65,
         "manifests[0].platform.variant: expected"),
        (("image", "layers", 0, "annotations"), {"k": 1}, "layers[0].annotations: expected a map"),
        (("image", "layers", 0, "annotations"), ["k"], "layers[0].annotations: expected a map"),
        (("index", "manifests", 0, "artifactType"), 7, "manifests[0].artifactType: expected"),
        (("image", "artifactType"), {}, "artifactType: expected a media type string"),
        (("image", "manifests"), [], "has both layers and manifests"),
    ],
)  # fmt: skip
def test_a_wrong_field_is_named_in_the_error(
    path: tuple[str | int, ...], value: object, message: str
) -> None:
    served_as = MEDIA_OCI_MANIFEST if path[0] == "image" else MEDIA_OCI_INDEX
    with pytest.raises(ManifestInvalid) as caught:
        parse_manifest(served_as, mutated(path, value))
    assert caught.value.message.startswith(message), caught.value.message


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "manifest is not valid JSON"),
        (b"{", "manifest is not valid JSON"),
        (b"\xff\xfe{}", "manifest is not valid JSON"),
        (b"[" * 100_000 + b"]" * 100_000, "manifest is not valid JSON"),  # too deep to parse
        (b"[]", "manifest is a JSON list, not an object"),
        (b'"x"', "manifest is a JSON str, not an object"),
        (b"{}", "config: expected a descriptor object"),
        (b" " * (MAX_MANIFEST_BYTES + 1), f"manifest over {MAX_MANIFEST_BYTES} bytes"),
    ],
)
def test_a_body_that_is_no_manifest_is_refused(data: bytes, message: str) -> None:
    with pytest.raises(ManifestInvalid) as caught:
        parse_manifest(MEDIA_OCI_MANIFEST, data)
    assert caught.value.message == message


def test_annotations_and_artifact_types_are_read_as_the_policy_needs_them() -> None:
    """cosign's signature sits in a layer annotation, a bundle referrer says what it is with
    ``artifactType``: the one model reads both (cachesvc.policy has no parser of its own)."""
    doc = image_manifest(1)
    doc["artifactType"] = "application/vnd.dev.sigstore.bundle.v0.3+json"
    doc["layers"][0]["annotations"] = {"dev.cosignproject.cosign/signature": "MEUC"}
    parsed = parse_manifest("", body(doc))
    assert isinstance(parsed, Manifest)
    assert parsed.artifact_type == "application/vnd.dev.sigstore.bundle.v0.3+json"
    assert parsed.layers[0].annotations == {"dev.cosignproject.cosign/signature": "MEUC"}
    assert parsed.config.annotations == {}
    referrers = index(None)
    referrers["manifests"][0]["artifactType"] = "text/spdx"
    listed = parse_manifest("", body(referrers))
    assert isinstance(listed, Index)
    assert listed.manifests[0].artifact_type == "text/spdx"


def test_a_descriptor_names_what_is_wrong_with_bytes_fetched_by_it() -> None:
    data = b"a signature payload"
    right = Descriptor(Digest.of(data), len(data))
    assert right.mismatch(data) is None
    assert right.mismatch(data + b" ") == f"{right.digest}: 20 bytes, the descriptor says 19"
    other = Descriptor(Digest.of(b"another payload!!!!"), len(data))
    assert other.mismatch(data) == f"{other.digest}: the bytes have another digest"


def test_huge_lists_are_refused_before_they_are_walked() -> None:
    doc = image_manifest(0)
    doc["layers"] = [{}] * (MAX_DESCRIPTORS + 1)  # each one invalid: the count decides first
    with pytest.raises(ManifestInvalid, match=f"layers: more than {MAX_DESCRIPTORS} entries"):
        parse_manifest(MEDIA_OCI_MANIFEST, body(doc))
    entries = index(None)
    entries["manifests"] = entries["manifests"] * (MAX_DESCRIPTORS + 1)
    with pytest.raises(ManifestInvalid, match=f"manifests: more than {MAX_DESCRIPTORS} entries"):
        parse_manifest(MEDIA_OCI_INDEX, body(entries))
    doc["layers"] = [descriptor(f"l{i}") for i in range(MAX_DESCRIPTORS)]
    parsed = parse_manifest(MEDIA_OCI_MANIFEST, body(doc))  # the bound itself is fine
    assert isinstance(parsed, Manifest)
    assert len(parsed.layers) == MAX_DESCRIPTORS


# -- properties ---------------------------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=10), inner,
                                                                  max_size=5),
    max_leaves=30,
)  # fmt: skip
field_names = st.sampled_from(
    ["mediaType", "config", "layers", "manifests", "digest", "size", "platform", "os",
     "architecture", "variant", "schemaVersion"]
)  # fmt: skip
media_types = st.sampled_from(
    [MEDIA_OCI_MANIFEST, MEDIA_OCI_INDEX, MEDIA_DOCKER_LIST, "application/json", ""]
)


@settings(max_examples=300, deadline=None)
@given(media_types, st.dictionaries(field_names, json_values, max_size=6))
def test_any_json_object_parses_or_is_manifest_invalid(served_as: str, doc: dict[str, Any]) -> None:
    try:
        parsed = parse_manifest(served_as, body(doc))
    except ManifestInvalid as exc:
        reason = exc.message
        assert reason  # a reason, never an empty error (nor any other exception)
        return
    descriptors = parsed.manifests if isinstance(parsed, Index) else parsed.blobs
    assert all(d.size >= 0 and str(d.digest).startswith("sha") for d in descriptors)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.integers(0, 3), max_size=8),
    st.sampled_from(["size", "digest", "platform", "mediaType"]),
    json_values,
)
def test_one_damaged_field_in_a_valid_index_is_caught(
    shape: list[int], key: str, value: object
) -> None:
    """A real index with one field of one entry replaced by arbitrary JSON: it parses only
    if the value is still valid for that field, and then means what it says."""
    doc = index(*[{"os": "linux", "architecture": f"a{n}"} for n in shape], None)
    doc["manifests"][-1][key] = value
    try:
        parsed = parse_manifest(MEDIA_OCI_INDEX, body(doc))
    except ManifestInvalid as exc:
        reason = exc.message
        assert reason.startswith(f"manifests[{len(shape)}]")
        assert key in reason
        return
    assert isinstance(parsed, Index)
    assert len(parsed.manifests) == len(shape) + 1
    last = parsed.manifests[-1]
    if key == "size":
        assert last.size == value
    if key == "digest":
        assert str(last.digest) == value
