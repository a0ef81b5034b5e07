"""Repository allow patterns: examples and properties (hypothesis)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cachesvc.errors import ConfigError
from cachesvc.policy.repositories import compile_allow

component = st.from_regex(r"\A[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*\Z").filter(
    lambda c: len(c) <= 30
)
path = st.lists(component, min_size=1, max_size=5)


def test_examples() -> None:
    allow = compile_allow(["dev-team/*", "platform/**", "library/nginx", "*/base"], "r.allow")
    assert allow.allows("dev-team/app")
    assert not allow.allows("dev-team/app/x")
    assert not allow.allows("dev-team")
    assert allow.allows("platform/a")
    assert allow.allows("platform/a/b/c")
    assert not allow.allows("platform")
    assert not allow.allows("platformx/a")
    assert allow.allows("library/nginx")
    assert not allow.allows("library/nginx2")
    assert allow.allows("team/base")
    assert not allow.allows("a/b/base")
    assert allow.describe() == "allow: [dev-team/*, platform/**, library/nginx, */base]"


@pytest.mark.parametrize(
    ("pattern", "message"),
    [
        ("", "non-empty"),
        ("dev-*", "whole components"),
        ("**/x", "only be the last"),
        ("a//b", "not a repository name component"),
        ("/a", "not a repository name component"),
        ("a/", "not a repository name component"),
        ("Dev-Team/*", "not a repository name component"),
        ("a/***", "whole components"),
        (3, "non-empty string"),
    ],
)
def test_malformed_patterns_are_config_errors_naming_the_entry(
    pattern: object, message: str
) -> None:
    with pytest.raises(ConfigError, match=message) as info:
        compile_allow(["ok/*", pattern], "registries.r.allow")
    assert info.value.key == "registries.r.allow[1]"


def test_one_string_instead_of_a_list() -> None:
    with pytest.raises(ConfigError, match="not one string"):
        compile_allow("dev-team/*", "registries.r.allow")


@given(path)
def test_exact_pattern_matches_only_itself(parts: list[str]) -> None:
    name = "/".join(parts)
    allow = compile_allow([name], "k")
    assert allow.allows(name)
    assert not allow.allows(name + "/x")
    assert not allow.allows("x" + name)


@given(path, component, path)
def test_one_level_and_any_depth(prefix: list[str], child: str, deeper: list[str]) -> None:
    base = "/".join(prefix)
    one, anywhere = compile_allow([base + "/*"], "k"), compile_allow([base + "/**"], "k")
    assert one.allows(f"{base}/{child}")
    assert not one.allows(f"{base}/{child}/" + "/".join(deeper))
    assert anywhere.allows(f"{base}/{child}/" + "/".join(deeper))
    assert not one.allows(base)
    assert not anywhere.allows(base)


@given(path, path)
def test_never_matches_outside_its_literal_prefix(prefix: list[str], name: list[str]) -> None:
    allow = compile_allow(["/".join(prefix) + "/**"], "k")
    repository = "/".join(name)
    assert allow.allows(repository) == (len(name) > len(prefix) and name[: len(prefix)] == prefix)


@given(st.text(max_size=40))
def test_any_text_compiles_or_is_a_config_error(text: str) -> None:
    try:
        allow = compile_allow([text], "k")
    except ConfigError:
        return
    assert allow.patterns == (text,)
