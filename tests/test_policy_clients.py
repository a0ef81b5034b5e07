"""Client CIDR allow list: IPv4, IPv6, IPv4-mapped peers, clear parse errors."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cachesvc.errors import ConfigError
from cachesvc.policy.clients import compile_clients, peer_address


def test_examples() -> None:
    allow = compile_clients(["127.0.0.0/8", "::1/128", "10.0.0.0/8", "fd00::/8"], "clients.allow")
    assert allow.allows("127.0.0.1")
    assert allow.allows("10.200.3.4")
    assert allow.allows("127.0.0.9"), "all of 127.0.0.0/8"
    assert not allow.allows("11.0.0.1")
    assert allow.allows("::1")
    assert allow.allows("fd12::5")
    assert not allow.allows("fe80::1")
    assert allow.allows("::ffff:10.1.2.3"), "an IPv4 client on a dual-stack socket"
    assert not allow.allows("::ffff:11.1.2.3")
    assert allow.allows("fd00::1%eth0")
    assert not allow.allows("")
    assert not allow.allows("/run/cachesvc.sock")


def test_narrow_list_refuses_other_loopback() -> None:
    allow = compile_clients(["127.0.0.1/32"], "clients.allow")
    assert allow.allows("127.0.0.1")
    assert not allow.allows("127.0.0.9")
    assert compile_clients(["127.0.0.1"], "k").allows("127.0.0.1"), "a bare address is a /32"


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ("10.0.0.1/8", "host bits set; did you mean 10.0.0.0/8"),
        ("10.0.0.0/33", "not an IPv4 or IPv6 network"),
        ("example.com", "not an IPv4 or IPv6 network"),
        ("", "CIDR string"),
        (None, "CIDR string"),
    ],
)
def test_parse_errors_name_the_entry(entry: object, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as info:
        compile_clients(["::1/128", entry], "clients.allow")
    assert info.value.key == "clients.allow[1]"
    with pytest.raises(ConfigError, match="not one string"):
        compile_clients("10.0.0.0/8", "clients.allow")


@given(st.ip_addresses(v=4), st.integers(min_value=0, max_value=32))
def test_ipv4_mapped_matches_like_ipv4(address: ipaddress.IPv4Address, prefix: int) -> None:
    network = ipaddress.ip_network(f"{address}/{prefix}", strict=False)
    allow = compile_clients([str(network)], "k")
    mapped = f"::ffff:{address}"
    assert allow.allows(str(address))
    assert allow.allows(mapped)
    assert peer_address(mapped) == address


@given(st.ip_addresses(), st.ip_addresses())
def test_membership_agrees_with_ipaddress(
    member: ipaddress.IPv4Address | ipaddress.IPv6Address,
    other: ipaddress.IPv4Address | ipaddress.IPv6Address,
) -> None:
    network = ipaddress.ip_network(f"{member}/{member.max_prefixlen - 4}", strict=False)
    allow = compile_clients([str(network)], "k")
    assert allow.allows(str(member))
    expected = other in network or peer_address(str(other)) in network
    assert allow.allows(str(other)) == expected
