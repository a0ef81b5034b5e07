"""``cluster:`` configuration: the typed, frozen ``ClusterConfig`` and ``parse_cluster``.

Setting ``cluster`` turns cluster mode on; ``parse_cluster`` validates exactly the keys of
issue 13's contract and raises :class:`cachesvc.errors.ConfigError` naming the key path
(``cluster.peers[1]``), so ``cachesvc serve`` prints it on one line and exits 2. Unknown keys
are errors, as everywhere in the configuration.

What "unset" means, key by key, is in the docstring of each field of :class:`ClusterConfig`.
Durations use the grammar of ``cachesvc.config.parse_duration`` (``"10s"``, ``"5m"``,
``"1h30m"``, a number of seconds), imported from ``cachesvc.config.values`` (a layer below
this one). ``ClusterConfig`` lives in ``cachesvc.config`` because ``Config.cluster`` holds it
and config cannot import cluster (the layer contract); ``parse_config`` calls
``parse_cluster`` and adds the checks that need the rest of the file (``cluster.listen``
must differ from ``listen`` and ``admin.listen``).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cachesvc.config.peeraddress import PeerAddress, split_host_port
from cachesvc.config.values import mapping, positive, string
from cachesvc.errors import ConfigError

__all__ = ["ClusterConfig", "ClusterTLS", "DnsName", "parse_cluster"]

DEFAULT_REFRESH = 10.0
DEFAULT_FANOUT = 8
DEFAULT_BLOCK_FOR = 300.0
MAX_FANOUT = 1024

_KEYS = {
    "listen", "advertise", "peers_dns", "peers", "dns_servers", "refresh", "token_file",
    "fanout", "block_for", "tls",
}  # fmt: skip
_TLS_KEYS = {"cert_file", "key_file", "ca_file"}
_LABEL = re.compile(r"(?!-)[A-Za-z0-9_-]{1,63}(?<!-)")


@dataclass(frozen=True, slots=True)
class DnsName:
    """``cluster.peers_dns``: the headless Service name whose A/AAAA records are the members,
    and the peer port every member listens on (DNS A/AAAA records carry no port)."""

    name: str
    port: int

    def __str__(self) -> str:
        return f"{self.name}:{self.port}"


@dataclass(frozen=True, slots=True)
class ClusterTLS:
    """``cluster.tls``: TLS on the peer listener and the peer client.

    ``ca_file`` set: both sides present ``cert_file`` and verify the other against it (mTLS).
    ``ca_file`` unset: the listener asks no client certificate and the client verifies the
    peer's certificate against the system CAs.
    """

    cert_file: Path
    key_file: Path
    ca_file: Path | None = None


@dataclass(frozen=True, slots=True)
class ClusterConfig:
    """The validated ``cluster:`` section; its presence in ``Config`` means cluster mode is on.

    - ``listen``: the peer API's bind address (its own listener, never the containerd one).
    - ``advertise``: how peers reach this daemon and its identity in the ring; defaults to
      ``listen`` unless that is a wildcard (``0.0.0.0``/``::``), where it is required.
    - ``peers_dns`` xor ``peers``: where the members come from; ``peers`` is empty when
      ``peers_dns`` is set and vice versa. Self may be in ``peers``; it is a member anyway.
    - ``dns_servers``: resolvers asked for ``peers_dns``; empty: the system resolver.
    - ``refresh``: seconds between two resolutions of ``peers_dns`` (default 10).
    - ``token_file``: the shared peer secret, one token per line (required; must exist).
    - ``fanout``: most peers one daemon streams one blob to at once (default 8).
    - ``block_for``: seconds a peer that sent wrong bytes is skipped (default 300).
    - ``tls``: None: plain HTTP between peers.
    """

    listen: PeerAddress
    advertise: PeerAddress
    token_file: Path
    peers_dns: DnsName | None = None
    peers: tuple[PeerAddress, ...] = ()
    dns_servers: tuple[PeerAddress, ...] = ()
    refresh: float = DEFAULT_REFRESH
    fanout: int = DEFAULT_FANOUT
    block_for: float = DEFAULT_BLOCK_FOR
    tls: ClusterTLS | None = None


def parse_cluster(data: object, key_path: str) -> ClusterConfig:
    """Validate the mapping found at ``key_path`` (normally ``"cluster"``) into a config."""
    raw = _mapping(data, key_path)
    for k in raw:
        if k not in _KEYS:
            known = ", ".join(sorted(_KEYS))
            raise ConfigError(f"{key_path}.{k}", f"unknown key (known keys here: {known})")
    listen = _address(raw.get("listen"), f"{key_path}.listen", wildcard=True)
    if raw.get("advertise") is not None:
        advertise = _address(raw["advertise"], f"{key_path}.advertise", wildcard=False)
    elif listen.is_wildcard:
        raise ConfigError(
            f"{key_path}.advertise",
            f"required when listen is a wildcard ({listen}): the address peers reach this "
            "daemon at, e.g. the pod IP",
        )
    else:
        advertise = listen
    peers_dns, peers = _sources(raw, key_path)
    return ClusterConfig(
        listen=listen,
        advertise=advertise,
        token_file=_token_file(raw.get("token_file"), f"{key_path}.token_file"),
        peers_dns=peers_dns,
        peers=peers,
        dns_servers=_dns_servers(raw.get("dns_servers"), f"{key_path}.dns_servers"),
        refresh=_duration(raw.get("refresh"), f"{key_path}.refresh", DEFAULT_REFRESH),
        fanout=_fanout(raw.get("fanout"), f"{key_path}.fanout"),
        block_for=_duration(raw.get("block_for"), f"{key_path}.block_for", DEFAULT_BLOCK_FOR),
        tls=_tls(raw.get("tls"), f"{key_path}.tls"),
    )


def _sources(raw: Mapping[str, Any], key: str) -> tuple[DnsName | None, tuple[PeerAddress, ...]]:
    has_dns, has_list = raw.get("peers_dns") is not None, raw.get("peers") is not None
    if has_dns == has_list:
        which = "both are set" if has_dns else "neither is set"
        raise ConfigError(key, f"set exactly one of peers_dns or peers ({which})")
    if has_list:
        for only_dns in ("dns_servers", "refresh"):
            if raw.get(only_dns) is not None:
                raise ConfigError(f"{key}.{only_dns}", "only used with peers_dns, not peers")
        return None, _peer_list(raw["peers"], f"{key}.peers")
    return _dns_name(raw["peers_dns"], f"{key}.peers_dns"), ()


def _mapping(value: object, key: str) -> Mapping[str, Any]:
    """As ``cachesvc.config``'s mappings, but a present key must not be empty (null)."""
    if value is None:
        raise ConfigError(key, "expected a mapping, got NoneType")
    return mapping(value, key)


def _address(value: object, key: str, *, wildcard: bool) -> PeerAddress:
    text = string(value, key)
    try:
        address = PeerAddress.parse(text)
    except ValueError as exc:
        raise ConfigError(key, f"expected 'IP:port' such as '10.0.3.7:5001': {exc}") from None
    if address.is_wildcard and not wildcard:
        raise ConfigError(key, f"a wildcard address cannot be reached by peers: {text!r}")
    return address


def _list(value: object, key: str) -> list[object]:
    if not isinstance(value, list) or not value:
        raise ConfigError(key, f"expected a non-empty list of 'host:port', got {value!r}")
    return value


def _peer_list(value: object, key: str) -> tuple[PeerAddress, ...]:
    seen: dict[PeerAddress, int] = {}
    for i, entry in enumerate(_list(value, key)):
        address = _address(entry, f"{key}[{i}]", wildcard=False)
        if address in seen:
            raise ConfigError(f"{key}[{i}]", f"{address} is already {key}[{seen[address]}]")
        seen[address] = i
    return tuple(seen)


def _dns_servers(value: object, key: str) -> tuple[PeerAddress, ...]:
    if value is None:
        return ()
    return tuple(
        _address(entry, f"{key}[{i}]", wildcard=False) for i, entry in enumerate(_list(value, key))
    )


def _dns_name(value: object, key: str) -> DnsName:
    text = string(value, key)
    try:
        host, port = split_host_port(text)
    except ValueError as exc:
        raise ConfigError(key, f"expected 'name:port' of a headless Service: {exc}") from None
    name = host.removesuffix(".")
    labels = name.split(".")
    if len(name) > 253 or not all(_LABEL.fullmatch(label) for label in labels):
        raise ConfigError(key, f"not a DNS name: {host!r}")
    if all(label.isdigit() for label in labels):
        raise ConfigError(key, f"expected a DNS name, not an address: {host!r} (use peers)")
    return DnsName(name.lower(), port)


def _duration(value: object, key: str, default: float) -> float:
    """A duration in ``cachesvc.config``'s grammar, greater than zero; ``default`` if unset."""
    return positive(value, key, default)


def _fanout(value: object, key: str) -> int:
    if value is None:
        return DEFAULT_FANOUT
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_FANOUT:
        raise ConfigError(key, f"expected a whole number from 1 to {MAX_FANOUT}, got {value!r}")
    return value


def _existing_file(value: object, key: str) -> Path:
    path = Path(string(value, key))
    if not path.is_file():
        raise ConfigError(key, f"no such file: {path}")
    return path


def _token_file(value: object, key: str) -> Path:
    """The file must exist and hold a token now; its content is never kept or shown here."""
    if value is None:
        raise ConfigError(key, "required: the file with the shared peer token")
    path = _existing_file(value, key)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(key, f"cannot read {path}: {type(exc).__name__}") from None
    if not any(line.strip() for line in text.splitlines()):
        raise ConfigError(key, f"{path} holds no token (one token per line)")
    return path


def _tls(value: object, key: str) -> ClusterTLS | None:
    if value is None:
        return None
    raw = _mapping(value, key)
    for k in raw:
        if k not in _TLS_KEYS:
            known = ", ".join(sorted(_TLS_KEYS))
            raise ConfigError(f"{key}.{k}", f"unknown key (known keys here: {known})")
    for needed in ("cert_file", "key_file"):
        if raw.get(needed) is None:
            raise ConfigError(f"{key}.{needed}", "required when tls is set")
    ca_file = raw.get("ca_file")
    return ClusterTLS(
        cert_file=_existing_file(raw["cert_file"], f"{key}.cert_file"),
        key_file=_existing_file(raw["key_file"], f"{key}.key_file"),
        ca_file=_existing_file(ca_file, f"{key}.ca_file") if ca_file is not None else None,
    )
