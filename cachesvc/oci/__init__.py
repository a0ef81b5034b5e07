"""OCI words: repository names, tags, digests, media types, the /v2 path grammar, byte
ranges, image references and the typed image model.

Everything a client sends is parsed here before it is used anywhere else. A value that
passes these checks is safe to place in a file path (digests) or an upstream URL (names,
tags); a value that does not is a 4xx ``RegistryError``. This package imports nothing of
cachesvc's but ``cachesvc.errors``: it is the bottom layer.
"""

from cachesvc.oci.apipath import ApiPath, Kind, parse_api_path
from cachesvc.oci.digest import Digest, Hasher, is_digest
from cachesvc.oci.image import (
    Descriptor,
    Index,
    Manifest,
    Platform,
    config_platform,
    parse_manifest,
)
from cachesvc.oci.media import (
    ACCEPT_ANY_MANIFEST,
    ACCEPTABLE_MANIFEST_TYPES,
    INDEX_MEDIA_TYPES,
    MANIFEST_MEDIA_TYPES,
    MAX_MANIFEST_BYTES,
    MEDIA_DOCKER_LIST,
    MEDIA_DOCKER_MANIFEST,
    MEDIA_OCI_INDEX,
    MEDIA_OCI_MANIFEST,
    normalize_accept,
    not_a_manifest,
)
from cachesvc.oci.names import MAX_NAME_LENGTH, is_registry_host, validate_name, validate_tag

__all__ = [
    "ACCEPTABLE_MANIFEST_TYPES",
    "ACCEPT_ANY_MANIFEST",
    "INDEX_MEDIA_TYPES",
    "MANIFEST_MEDIA_TYPES",
    "MAX_MANIFEST_BYTES",
    "MAX_NAME_LENGTH",
    "MEDIA_DOCKER_LIST",
    "MEDIA_DOCKER_MANIFEST",
    "MEDIA_OCI_INDEX",
    "MEDIA_OCI_MANIFEST",
    "ApiPath",
    "Descriptor",
    "Digest",
    "Hasher",
    "Index",
    "Kind",
    "Manifest",
    "Platform",
    "config_platform",
    "is_digest",
    "is_registry_host",
    "normalize_accept",
    "not_a_manifest",
    "parse_api_path",
    "parse_manifest",
    "validate_name",
    "validate_tag",
]
