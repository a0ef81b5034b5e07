"""Routing: which registry and repository a name means, and that answers are remembered."""

from __future__ import annotations

import pytest

from cachesvc.config import RegistryConfig
from cachesvc.errors import NameInvalid, NameUnknown
from cachesvc.mirror.routing import ROUTES_REMEMBERED, Router, Target
from cachesvc.oci import normalize_accept, parse_api_path

REGISTRIES = {
    name: RegistryConfig(name=name, endpoints=(f"https://{name}",))
    for name in ("docker.io", "ghcr.io")
}


def test_routes_by_ns_prefix_and_default() -> None:
    router = Router(REGISTRIES, "docker.io")
    assert router.route("ghcr.io", "org/app") == Target("ghcr.io", "org/app", True, "org/app")
    assert router.route(None, "ghcr.io/org/app") == Target(
        "ghcr.io", "org/app", False, "ghcr.io/org/app"
    )
    assert router.route(None, "alpine") == Target("docker.io", "library/alpine", False, "alpine")


def test_a_remembered_route_is_the_same_answer_and_errors_are_never_remembered() -> None:
    router = Router(REGISTRIES, None)
    first = router.route("ghcr.io", "org/app")
    assert router.route("ghcr.io", "org/app") is first
    for _ in range(2):
        with pytest.raises(NameInvalid):
            router.route("ghcr.io", "Org/App")
        with pytest.raises(NameUnknown):
            router.route("quay.io", "org/app")
        with pytest.raises(NameUnknown):
            router.route(None, "org/app")


def test_remembered_routes_are_bounded() -> None:
    router = Router(REGISTRIES, "docker.io")
    for n in range(ROUTES_REMEMBERED + 10):
        assert router.route(None, f"team/app{n}").repository == f"team/app{n}"
    assert router._remembered.cache_info().currsize <= ROUTES_REMEMBERED


def test_memoized_parsers_answer_like_fresh_ones() -> None:
    for _ in range(2):
        path = parse_api_path("a/blobs/b/manifests/x")
        assert (path.name, path.kind, path.reference) == ("a/blobs/b", "manifests", "x")
    oci = "application/vnd.oci.image.manifest.v1+json"
    index = "application/vnd.oci.image.index.v1+json"
    assert normalize_accept([f"{oci};q=0.5", index]) == (index, oci)
    assert normalize_accept([f"{oci}, {index}"]) == (index, oci)
    assert normalize_accept(["text/html"]) == normalize_accept([])
