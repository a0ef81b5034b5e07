"""Manifests: exact upstream bytes, verified by digest, tags cached per Accept set.

By digest a manifest is immutable: fetched once, checked against its digest, kept
like a blob. By tag, the tag -> digest mapping is cached per (registry, repository,
tag, Accept set) for the registry's ``tag_ttl`` and revalidated with HEAD, which
Docker Hub does not count against its pull limit. When upstream fails, times out
or rate-limits (ours or its), the last known mapping is served (``stale``) instead
of an error, for at most the registry's ``max_stale`` since upstream last confirmed
it. A 401/403 is not papered over: it surfaces, so a broken secret is noticed.

An upstream 404 for a tag is remembered for ``negative_ttl``, keyed like the tag cache
(registry, repository, tag *and* Accept set: curl's ``*/*`` missing an OCI-only image
says nothing about containerd's lookup), so a typo in a Deployment does not hammer the
registry; the upstream's own reason is passed on. 404s by digest are ``Upstream``'s.
An answer for a manifest must be a manifest (``oci.not_a_manifest``), whatever
redirect led to it.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import replace

from cachesvc.clock import SYSTEM_CLOCK, Clock
from cachesvc.config.peeraddress import PeerAddress
from cachesvc.errors import (
    DigestMismatch,
    ManifestUnknown,
    TagInvalid,
    UpstreamDenied,
    UpstreamError,
    UpstreamUnauthorized,
)
from cachesvc.metrics import Metrics
from cachesvc.mirror.manifestcache import MEMORY_BUDGET, BodyCache, ManifestAnswer, Result
from cachesvc.mirror.peermanifests import PeerManifests
from cachesvc.mirror.routing import Target
from cachesvc.mirror.singleflight import SingleFlight
from cachesvc.mirror.upstreammanifest import (
    header_digest,
    manifest_media_type,
    upstream_reason,
    verified_manifest,
)
from cachesvc.oci import (
    ACCEPT_ANY_MANIFEST,
    Digest,
    validate_tag,
)
from cachesvc.store.store import ManifestRecord, Store, TagRecord
from cachesvc.upstream.client import Answer, Upstream

log = logging.getLogger("cachesvc.manifests")

# The policy's check of a fetched manifest before it is stored (cachesvc.mirror.gate.Gate.vet):
# raises to refuse, and then nothing is kept.
Vet = Callable[[Target, Digest, bytes], Awaitable[None]]
# Tags remembered as missing; the oldest are forgotten first beyond this many.
NEGATIVE_ENTRIES = 10_000


class Manifests:
    """Manifest lookups for the mirror."""

    def __init__(
        self,
        store: Store,
        upstreams: Mapping[str, Upstream],
        metrics: Metrics | None = None,
        clock: Clock = SYSTEM_CLOCK,  # tag ages (wall: stored in the index), 404 expiry
        peers: PeerManifests | None = None,  # cluster mode: ask the owner before upstream
        vet: Vet | None = None,
    ) -> None:
        self._peers = peers
        self._store = store
        self._vet = vet
        self._clock = clock
        self._upstreams = upstreams
        self._metrics = metrics
        # tag-cache key -> (expiry (monotonic), the 404's message)
        self._missing: OrderedDict[str, tuple[float, str]] = OrderedDict()
        self._bodies = BodyCache(MEMORY_BUDGET)
        self._tags: dict[str, TagRecord] = {}
        self._by_digest: SingleFlight[str, tuple[ManifestRecord, str]] = SingleFlight()
        self._by_tag: SingleFlight[str, tuple[TagRecord, Result, float | None, str | None]] = (
            SingleFlight()
        )

    # -- by digest -------------------------------------------------------------------

    def cached(self, digest: Digest) -> tuple[ManifestRecord, bytes] | None:
        """A stored manifest (memory first, then disk)."""
        held = self._bodies.get(str(digest))
        if held is not None:
            return held.record, held.body
        item = self._store.get_manifest(digest)
        if item is not None:
            self._bodies.put(*item)
        return item

    def held(
        self,
        reference: str,
        *,
        head: bool,
        passes: Callable[[Digest], bool] | None = None,
    ) -> ManifestAnswer | None:
        """The hit answer for a digest reference held in memory, else None.

        Keyed by the digest's text, so a hit needs no parse: only digests that were
        verified against their bytes are ever keys. With ``passes``, a held manifest
        it refuses is None too (and not counted as a use).
        """
        held = self._bodies.get(reference)
        if held is None or (passes is not None and not passes(held.record.digest)):
            return None
        self._store.touch(held.record.digest)  # a memory hit is a use: eviction must know
        return held.head if head else held.get

    async def by_digest(self, target: Target, reference: str, *, head: bool) -> ManifestAnswer:
        """A manifest by digest reference: held, stored, or fetched once and verified.

        The one place a digest reference meets the memory cache (see ``held``: a hit
        needs no parse); anything else parses it, so a malformed one is DigestInvalid.
        """
        answer = self.held(reference, head=head)
        if answer is not None:
            return answer
        digest = Digest.parse(reference)
        item = self.cached(digest)
        if item is not None:
            return ManifestAnswer(item[0], None if head else item[1], "hit")
        peers = self._peers.for_digest(digest) if self._peers is not None else ()
        # Lookups that ask peers fly apart from those that do not (requests from peers),
        # so a peer's request never waits on our own request to a peer: no loops.
        flight = f"{'peers' if peers else ''}\0{target.registry}\0{digest}"
        (record, endpoint), joined = await self._by_digest.do(
            flight, lambda: self._fetch_digest(target, digest, peers)
        )
        item = self.cached(digest)
        if item is None:  # removed in between; extremely unlikely
            raise ManifestUnknown(f"manifest {digest} vanished from the cache")
        result: Result = "coalesced" if joined else "miss"
        vetted = not joined and self._vet is not None
        return ManifestAnswer(
            record, None if head else item[1], result, upstream=endpoint, vetted=vetted
        )

    def forget(self, digest: Digest) -> None:
        """Drop a purged manifest from memory: its body and every tag pointing at it."""
        self._bodies.drop(digest)
        for key in [k for k, r in self._tags.items() if r.digest == digest]:
            del self._tags[key]

    async def _fetch_digest(
        self, target: Target, digest: Digest, peers: tuple[PeerAddress, ...] = ()
    ) -> tuple[ManifestRecord, str]:
        upstream = self._upstreams[target.registry]
        answer = None
        if peers and self._peers is not None:
            answer = await self._peers.digest(peers, target, digest)
        if answer is None:
            answer = await upstream.fetch(
                "GET",
                f"/v2/{target.repository}/manifests/{digest}",
                scope=f"repository:{target.repository}:pull",
                headers={"Accept": ACCEPT_ANY_MANIFEST},
            )
        if answer.status == 404:
            raise ManifestUnknown(
                f"manifest {digest} not found in {target.registry}/{target.repository}"
            )
        if answer.status != 200:
            raise UpstreamError(f"{target.registry} answered {answer.status} for a manifest")
        actual = Digest.of(answer.body, digest.algorithm)
        if actual != digest:
            raise DigestMismatch(
                f"{target.registry} sent a manifest for {digest} whose digest is {actual}; "
                "nothing was kept"
            )
        media_type = manifest_media_type(target.registry, str(digest), answer)
        record = await self._put(target, digest, media_type, answer.body)
        return record, answer.endpoint

    async def _put(
        self, target: Target, digest: Digest, media_type: str, body: bytes
    ) -> ManifestRecord:
        """Store a verified manifest (write, fsync, rename, index: off the loop), once the
        policy (if any) accepted it."""
        if self._vet is not None:
            await self._vet(target, digest, body)
        origin = (target.registry, target.repository)
        try:
            record = await asyncio.to_thread(
                self._store.put_manifest, digest, media_type, body, origin
            )
        except OSError as exc:
            # A full or failing disk: the verified bytes in hand are served (and held
            # in memory) without being stored; /readyz reports the trouble.
            self._store.health.failed("write", exc)
            log.warning("manifest %s not stored: %s", digest, exc.strerror or exc)
            record = ManifestRecord(digest, media_type, len(body))
        self._bodies.put(record, body)
        return record

    # -- by tag ----------------------------------------------------------------------

    def held_tag(
        self,
        target: Target,
        tag: str,
        accept: tuple[str, ...],
        *,
        head: bool,
        ttl: float,
        passes: Callable[[Digest], bool] | None = None,
    ) -> ManifestAnswer | None:
        """The hit answer for a tag confirmed within ``ttl`` whose manifest is held, with
        no await; else None, and ``by_tag`` decides (tag syntax, the negative cache, the
        index, upstream). The answer ``by_tag`` gives for such a tag: it asks this first."""
        key = _tag_key(target, tag, accept)
        if key in self._missing:
            return None
        record = self._tags.get(key)  # only valid tags are ever keys
        if record is None or self._clock.time() - record.checked_at >= ttl:
            return None
        return self.held(str(record.digest), head=head, passes=passes)

    async def by_tag(
        self, target: Target, tag: str, accept: tuple[str, ...], *, head: bool, ttl: float
    ) -> ManifestAnswer:
        """A manifest by tag, through the tag cache."""
        try:
            validate_tag(tag)
        except TagInvalid:
            # The distribution spec (and its conformance suite): a reference that is neither
            # a digest nor a valid tag names no manifest. 404, and upstream is not asked.
            raise ManifestUnknown(
                f"manifest unknown: {tag[:80]!r} is neither a digest nor a valid tag (up to 128 "
                "of [A-Za-z0-9_.-], not starting with . or -)"
            ) from None
        key = _tag_key(target, tag, accept)
        self._check_missing(target, tag, key)
        record = self._tags.get(key)
        if record is None:  # not looked up since start-up: the index (SQLite) knows
            record = await asyncio.to_thread(self._store.index.get_tag, key)
        if record is not None and self._clock.time() - record.checked_at < ttl:
            self._tags[key] = record
            answer = await self._answer(target, record, head, "hit")
            if answer is not None:
                return answer
        peers = self._peers.for_tag(target, tag, accept) if self._peers is not None else ()
        flight = f"peers\0{key}" if peers else key  # as for digests: no loops between peers
        (record, result, stale_age, endpoint), joined = await self._by_tag.do(
            flight, lambda: self._resolve(target, tag, accept, key, record, peers)
        )
        if joined and result == "miss":
            result = "coalesced"
        answer = await self._answer(target, record, head, result, stale_age)
        if answer is None:
            raise ManifestUnknown(f"manifest for {tag} is not available")
        if answer.upstream is None and endpoint is not None:
            answer = replace(answer, upstream=endpoint)
        if result == "miss" and self._vet is not None:  # _resolve stored it: vetted
            answer = replace(answer, vetted=True)
        return answer

    async def _answer(
        self,
        target: Target,
        record: TagRecord,
        head: bool,
        result: Result,
        stale_age: float | None = None,
    ) -> ManifestAnswer | None:
        if result == "hit" and stale_age is None:
            held = self.held(str(record.digest), head=head)
            if held is not None:
                return held
        manifest = ManifestRecord(record.digest, record.media_type, record.size)
        item = self.cached(record.digest)
        if item is not None:
            manifest = item[0]
            return ManifestAnswer(manifest, None if head else item[1], result, stale_age)
        if head:
            return ManifestAnswer(manifest, None, result, stale_age)
        if result == "stale":
            return None
        fetched = await self.by_digest(target, str(record.digest), head=False)
        return ManifestAnswer(fetched.record, fetched.body, result, stale_age, fetched.upstream)

    async def _resolve(
        self,
        target: Target,
        tag: str,
        accept: tuple[str, ...],
        key: str,
        previous: TagRecord | None,
        peers: tuple[PeerAddress, ...] = (),
    ) -> tuple[TagRecord, Result, float | None, str | None]:
        upstream = self._upstreams[target.registry]
        path = f"/v2/{target.repository}/manifests/{tag}"
        scope = f"repository:{target.repository}:pull"
        headers = {"Accept": ", ".join(accept)}
        from_owner = None
        if peers and self._peers is not None:
            from_owner = await self._peers.tag(peers, target, tag, accept)
        try:
            if from_owner is not None:
                answer = from_owner
            elif previous is not None:
                head = await upstream.fetch("HEAD", path, scope=scope, headers=headers)
                if head.status == 404:
                    raise self._missing_tag(target, tag, key, head)
                digest = header_digest(head)
                if head.status == 200 and digest == previous.digest:
                    record = TagRecord(
                        previous.digest, previous.media_type, previous.size, self._clock.time()
                    )
                    await self._remember(key, record)
                    return record, "hit", None, head.endpoint
                answer = await upstream.fetch("GET", path, scope=scope, headers=headers)
            else:
                answer = await upstream.fetch("GET", path, scope=scope, headers=headers)
        except (ManifestUnknown, UpstreamUnauthorized, UpstreamDenied):
            raise
        except UpstreamError as exc:
            age = None if previous is None else self._stale_age(target, tag, previous, exc)
            if previous is None or age is None:
                raise
            return previous, "stale", age, None
        if answer.status == 404:
            raise self._missing_tag(target, tag, key, answer)
        digest, media_type = verified_manifest(target, tag, answer)
        manifest = await self._put(target, digest, media_type, answer.body)
        record = TagRecord(digest, manifest.media_type, manifest.size, self._clock.time())
        await self._remember(key, record)
        return record, "miss", None, answer.endpoint

    def _stale_age(
        self, target: Target, tag: str, previous: TagRecord, exc: UpstreamError
    ) -> float | None:
        """How old the last known mapping is if it may stand in for a failed upstream (held,
        and confirmed within ``max_stale``); else None, and a mapping too old says how old
        on ``exc``."""
        age = self._clock.time() - previous.checked_at
        max_stale = self._upstreams[target.registry].config.max_stale
        if age <= max_stale and self.cached(previous.digest) is not None:
            log.warning(
                "serving stale %s/%s:%s (%.0fs old): %s",
                target.registry, target.repository, tag, age, exc,
            )  # fmt: skip
            if self._metrics is not None:
                self._metrics.stale_served.labels(target.registry).inc()
            return age
        if age > max_stale:
            exc.detail = {"stale_for_seconds": int(age), "max_stale_seconds": int(max_stale)}
        return None

    def _missing_tag(self, target: Target, tag: str, key: str, answer: Answer) -> ManifestUnknown:
        """Remember an upstream 404 (per tag-cache key, so per Accept set) for
        ``negative_ttl``, with upstream's reason; returns the error to raise."""
        reason = upstream_reason(answer)
        message = f"{target.registry}/{target.repository}:{tag} not found"
        if reason:
            message += f" (upstream: {reason})"
        ttl = self._upstreams[target.registry].config.negative_ttl
        if ttl > 0:
            self._missing.pop(key, None)
            self._missing[key] = (self._clock.monotonic() + ttl, message)
            while len(self._missing) > NEGATIVE_ENTRIES:
                self._missing.popitem(last=False)
        return ManifestUnknown(message)

    def _check_missing(self, target: Target, tag: str, key: str) -> None:
        remembered = self._missing.get(key)
        if remembered is None:
            return
        expires, message = remembered
        if expires <= self._clock.monotonic():
            del self._missing[key]
            return
        if self._metrics is not None:
            self._metrics.negative_hits.labels(target.registry).inc()
        raise ManifestUnknown(
            f"{message}; upstream said so moments ago, cachesvc remembers it for negative_ttl"
        )

    async def _remember(self, key: str, record: TagRecord) -> None:
        """Keep a confirmed tag mapping in memory and in the index (SQLite: off the loop)."""
        if len(self._tags) > 100_000:
            self._tags.clear()
        self._tags[key] = record
        try:
            await asyncio.to_thread(self._store.index.put_tag, key, record)
        except OSError as exc:  # kept in memory only: resolved again after a restart
            self._store.health.failed("write", exc)
            log.warning("tag mapping not stored: %s", exc.strerror or exc)


def _tag_key(target: Target, tag: str, accept: tuple[str, ...]) -> str:
    """The tag cache's key: a tag answers differently by the Accept set it was asked with."""
    return "\0".join((target.registry, target.repository, tag, ",".join(accept)))
