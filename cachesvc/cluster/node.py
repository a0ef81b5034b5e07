"""This daemon as a cluster member: membership, peer health, the peer client, fan-out.

``Cluster`` is what the mirror asks "whom do I ask for this key?" (:meth:`Cluster.peers_for`)
and what the admin API and the metrics read. It composes the pieces that every node
computes alike (ranking, membership, health) with this node's own state (its token file,
its peer streams). Counters are plain attributes; the metrics read them at scrape time.
"""

from __future__ import annotations

import asyncio
import ssl

import aiohttp

from cachesvc.background import cancel_and_wait
from cachesvc.clock import Clock
from cachesvc.cluster.fanout import Fanout
from cachesvc.cluster.membership import Membership, source_for
from cachesvc.cluster.origin import from_peer
from cachesvc.cluster.peerclient import PeerClient, PeerFailed
from cachesvc.cluster.peerhealth import PeerHealth
from cachesvc.cluster.ranking import BlobKey, RankKey, ranking
from cachesvc.config import Timeouts
from cachesvc.config.cluster import ClusterConfig
from cachesvc.config.peeraddress import PeerAddress
from cachesvc.errors import ConfigError
from cachesvc.metrics import Metrics
from cachesvc.tokenfile import TokenFile

__all__ = ["Cluster", "client_tls", "server_tls"]


class Cluster:
    """The cluster as this daemon sees it."""

    def __init__(
        self,
        config: ClusterConfig,
        session: aiohttp.ClientSession,
        timeouts: Timeouts,
        clock: Clock,
        metrics: Metrics,
    ) -> None:
        self.config = config
        self.metrics = metrics
        self.timeouts = timeouts  # a fill's source chain times out a stalled source with these
        self.self_address = config.advertise
        self.tokens = TokenFile.load(
            config.token_file, config_key="cluster.token_file", clock=clock.monotonic
        )
        self.health = PeerHealth(block_for=config.block_for, clock=clock.monotonic)
        self.membership = Membership(
            self.self_address,
            source_for(config),
            refresh=config.refresh,
            clock=clock.monotonic,
            on_change=self.health.retain,
        )
        self.client = PeerClient(
            session,
            self.tokens,
            self.self_address,
            timeouts,
            is_member=self.is_member,
            ssl_context=client_tls(config),
        )
        self.fanout = Fanout(config.fanout)
        metrics.cluster_members.set_function(lambda: len(self.membership.members))
        metrics.peer_streams_peak.set_function(lambda: self.fanout.peak)
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Learn the members once (so the first requests see the ring), then keep refreshing."""
        await self.membership.refresh()
        self._task = asyncio.get_running_loop().create_task(
            self.membership.run(), name="cluster membership"
        )

    async def stop(self) -> None:
        """Stop refreshing the members."""
        await cancel_and_wait(self._task)
        self._task = None

    def is_member(self, peer: PeerAddress) -> bool:
        """Whether ``peer`` is in the current member set."""
        return peer in self.membership.members

    def usable(self, peer: PeerAddress) -> bool:
        """A member other than this daemon that is neither blocked nor unreachable."""
        return (
            peer != self.self_address
            and self.is_member(peer)
            and self.health.state(peer).state == "ok"
        )

    def ranking(self, key: RankKey) -> tuple[PeerAddress, ...]:
        """Every member, ``key``'s owner first."""
        return ranking(key, self.membership.members)

    def peers_for(self, key: RankKey) -> tuple[PeerAddress, ...]:
        """The peers to ask for ``key``, in order; empty inside a request from a peer
        (never forwarded) and when this daemon is the key's effective owner."""
        if from_peer():
            return ()
        return self.health.sources(self.ranking(key), self.self_address)

    def failed(self, error: PeerFailed) -> None:
        """A peer could not be connected to: skip it for a while."""
        if error.connect:
            self.health.mark_unreachable(error.peer)

    def block(self, peer: PeerAddress) -> None:
        """``peer`` sent bytes that did not match their digest: skip it for ``block_for``."""
        self.health.block(peer)
        self.metrics.peers_blocked.inc()

    def status(self, digest: str | None = None) -> dict[str, object]:
        """``GET /admin/v1/cluster``: self, members, membership age, peers; per digest its
        owner and ranking."""
        members = self.membership.members
        body: dict[str, object] = {
            "self": str(self.self_address),
            "members": self.membership.sorted_members(),
            "membership_age_seconds": round(self.membership.age(), 3),
            "membership_error": self.membership.last_error,
            "fanout": self.config.fanout,
            "peers": [s.as_json() for s in self.health.states(members, self.self_address)],
        }
        if digest is not None:
            order = self.ranking(BlobKey(digest))
            body["digest"] = digest
            body["owner"] = str(order[0])
            body["ranking"] = [str(m) for m in order]
        return body


def _context(config: ClusterConfig, purpose: ssl.Purpose) -> ssl.SSLContext | None:
    tls = config.tls
    if tls is None:
        return None
    try:
        context = ssl.create_default_context(
            purpose, cafile=str(tls.ca_file) if tls.ca_file else None
        )
        context.load_cert_chain(tls.cert_file, tls.key_file)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError("cluster.tls", f"cannot use the certificate or key: {exc}") from None
    return context


def client_tls(config: ClusterConfig) -> ssl.SSLContext | None:
    """The peer client's TLS (it presents ``cert_file``; verifies against ``ca_file``)."""
    return _context(config, ssl.Purpose.SERVER_AUTH)


def server_tls(config: ClusterConfig) -> ssl.SSLContext | None:
    """The peer listener's TLS; with ``ca_file`` it requires client certificates (mTLS)."""
    context = _context(config, ssl.Purpose.CLIENT_AUTH)
    if context is not None and config.tls is not None and config.tls.ca_file is not None:
        context.verify_mode = ssl.CERT_REQUIRED
    return context
