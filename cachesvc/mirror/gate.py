"""The policy step: decided before any upstream request, and before anything is stored.

Two questions, in this order (the client CIDR check runs earlier still, in the server):

1. ``admit``: is the repository in the registry's ``allow`` list? Asked for every request
   (manifests by tag and by digest, blobs, tags/list, referrers, prewarm), before the
   mirror looks anything up, so a refused repository costs no upstream request at all.
2. ``vet`` (registries with ``verify``): does a signature by a configured key cover this
   manifest digest? Asked by ``Manifests`` before a fetched manifest is stored (refused
   bytes never reach the disk) and by the facade for every manifest it answers (a cached
   manifest may have come in before the policy, or through another repository).

Verification fetches the cosign artifacts from the image's own repository through the
registry's upstream client (its credentials, endpoints and limits): the ``sha256-<hex>.sig``
manifest, the referrers (the API, else the ``sha256-<hex>`` tag fallback) and the bundle
manifests they list, then the signature blobs; ``cachesvc.policy.signature`` decides, with
no network. Verdicts are cached per (registry, repository, digest) under the key set they
were decided with; a verified index records verdicts for the platform manifests it pins.

Verdicts live in memory, so after a restart a platform manifest asked for by digest without
its index first (a prewarm resumed, a client that kept the digest) would have no signature
of its own. Which verified index pinned it is therefore also written to the store's index
(``covered:`` keys, a few bytes per child): on a verdict miss, that stored index (its bytes
re-hashed by the store) is verified again with the current keys, and its verdict covers the
child. Only the relation persists, never a verdict: a key removed since is still enforced.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass

from cachesvc.clock import SYSTEM_CLOCK, Clock
from cachesvc.config import RegistryConfig
from cachesvc.errors import ManifestInvalid, PolicyDenied, UpstreamError
from cachesvc.metrics import Metrics
from cachesvc.mirror.routing import Target
from cachesvc.mirror.singleflight import SingleFlight
from cachesvc.oci import INDEX_MEDIA_TYPES, MANIFEST_MEDIA_TYPES, MAX_MANIFEST_BYTES, Digest
from cachesvc.policy import Evidence, Reason, Verdict, VerdictCache, blobs_to_fetch, verify_image
from cachesvc.policy.coverage import covered_manifests
from cachesvc.policy.keyring import Keyring
from cachesvc.policy.payload import MAX_BLOB_BYTES, MAX_SIGNATURES, ArtifactError
from cachesvc.policy.referrers import bundle_referrers, referrers_tag
from cachesvc.policy.simplesigning import signature_tag
from cachesvc.store.store import Store
from cachesvc.upstream.client import Upstream

__all__ = ["ADMISSIONS_REMEMBERED", "DECISION_RESULTS", "VERDICTS_REMEMBERED", "Gate"]

log = logging.getLogger("cachesvc.policy")

# Verdicts remembered per registry; each is ~200 bytes, and a platform manifest covered by
# its index must still be remembered when containerd asks for it moments later.
VERDICTS_REMEMBERED = 65_536
# Repositories whose allow-list answer is remembered (client-chosen names: bounded).
ADMISSIONS_REMEMBERED = 4096
# Every value of cachesvc_policy_decisions_total's ``result`` label (created at 0).
DECISION_RESULTS = (
    "allowed",
    "denied_allow",
    "verified",
    "cached",
    "warned",
    *(f"denied_{reason.name.lower()}" for reason in Reason),
)
_ACCEPT = ", ".join(MANIFEST_MEDIA_TYPES)
_INDEX_ACCEPT = ", ".join(sorted(INDEX_MEDIA_TYPES))


@dataclass(frozen=True, slots=True)
class _Verify:
    """One registry's ``verify``: its keys (re-read on change), mode and verdicts."""

    keyring: Keyring
    mode: str
    verdicts: VerdictCache


class Gate:
    """The policy decisions for every configured registry."""

    def __init__(
        self,
        registries: Mapping[str, RegistryConfig],
        upstreams: Mapping[str, Upstream],
        metrics: Metrics,
        clock: Clock = SYSTEM_CLOCK,
        store: Store | None = None,  # where index coverage survives a restart
    ) -> None:
        self._store = store
        self._upstreams = upstreams
        self._metrics = metrics
        self._allow = {n: r.allow for n, r in registries.items() if r.allow is not None}
        self._verify: dict[str, _Verify] = {}
        for name, registry in registries.items():
            if registry.verify is not None:
                keyring = Keyring.load(
                    registry.verify.keys,
                    config_key=f"registries.{name}.verify.keys",
                    clock=clock.monotonic,
                )
                verdicts = VerdictCache(
                    negative_ttl=registry.negative_ttl,
                    max_entries=VERDICTS_REMEMBERED,
                    clock=clock.monotonic,
                )
                self._verify[name] = _Verify(keyring, registry.verify.mode, verdicts)
        self._flights: SingleFlight[tuple[str, str, str, str], Verdict] = SingleFlight()
        for name in registries:  # every series exists from start-up, at 0
            for result in DECISION_RESULTS:
                metrics.policy_decisions_by(name, result)

    def admit(self, target: Target) -> None:
        """Refuse (403 DENIED, rule ``allow``) a repository outside the ``allow`` list."""
        allow = self._allow.get(target.registry)
        if allow is None:
            return
        if self._allows(target.registry, target.repository):
            self._metrics.policy_decisions_by(target.registry, "allowed").inc()
            return
        self._metrics.policy_decisions_by(target.registry, "denied_allow").inc()
        raise PolicyDenied(
            "allow",
            f"repository {target.registry}/{target.repository} is not in "
            f"registries.{target.registry}.{allow.describe()}; cachesvc fetches nothing for it",
        )

    @functools.lru_cache(maxsize=ADMISSIONS_REMEMBERED)  # noqa: B019  # one Gate per daemon
    def _allows(self, registry: str, repository: str) -> bool:
        """The allow list's answer, remembered: every request of a pull asks it again."""
        return self._allow[registry].allows(repository)

    def passes_held(self, target: Target, digest: Digest) -> bool:
        """Whether a manifest held in memory may be answered at once, without an await:
        ``admit`` would let the repository through and ``vet`` would find a remembered
        approval. True is counted as those two count it; False counts nothing, and the
        caller then takes the full path, where ``admit`` and ``vet`` decide and count.
        """
        allow = self._allow.get(target.registry)
        if allow is not None and not self._allows(target.registry, target.repository):
            return False
        policy = self._verify.get(target.registry)
        if policy is not None:
            _, ring = policy.keyring.current()
            verdict = policy.verdicts.get(target.registry, target.repository, str(digest), ring)
            if verdict is None or not verdict.ok:
                return False
            self._count(target.registry, "cached")
        if allow is not None:
            self._metrics.policy_decisions_by(target.registry, "allowed").inc()
        return True

    def verifies(self, registry: str) -> bool:
        """Whether manifests of ``registry`` must be signed (``verify`` is configured)."""
        return registry in self._verify

    async def vet(self, target: Target, digest: Digest, body: bytes | None) -> None:
        """Refuse (403 DENIED, rule ``verify``) a manifest no configured key signed.

        ``body`` is the manifest (for an index: to cover its platform manifests); without
        it a verdict is decided but not remembered. ``mode: warn`` logs and returns.
        """
        policy = self._verify.get(target.registry)
        if policy is None:
            return
        _, ring = policy.keyring.current()
        key = (target.registry, target.repository, str(digest), ring)
        verdict = policy.verdicts.get(*key)
        if verdict is None:
            verdict = await self._via_stored_index(policy, target, digest, ring)
        if verdict is None:
            verdict, _ = await self._flights.do(
                key, lambda: self._decide(policy, target, digest, body)
            )
            fresh = True
        else:
            fresh = False
            self._count(target.registry, "cached" if verdict.ok else self._refusal(policy, verdict))
        if verdict.ok:
            return
        if policy.mode == "warn":
            if fresh:
                log.warning(
                    "verify (mode warn): serving %s/%s@%s although refused: %s",
                    target.registry, target.repository, digest, verdict.message(),
                )  # fmt: skip
            return
        raise PolicyDenied(
            "verify",
            f"{target.registry}/{target.repository}: {verdict.message()} "
            f"(registries.{target.registry}.verify)",
        )

    @staticmethod
    def _refusal(policy: _Verify, verdict: Verdict) -> str:
        if policy.mode == "warn":
            return "warned"
        assert verdict.reason is not None
        return f"denied_{verdict.reason.name.lower()}"

    def _count(self, registry: str, result: str) -> None:
        self._metrics.policy_decisions_by(registry, result).inc()

    async def _via_stored_index(
        self, policy: _Verify, target: Target, digest: Digest, ring: str
    ) -> Verdict | None:
        """The child's verdict re-derived from the stored index that pinned it, if the store
        recorded one for this repository and that index verifies again (the caller counts
        the request's one decision; the index's own is not counted)."""
        if self._store is None:
            return None
        index = self._store.index.covering_index(target.registry, target.repository, digest)
        item = self._store.get_manifest(index) if index is not None else None
        if index is None or item is None:
            return None
        key = (target.registry, target.repository, str(index), ring)
        verdict = policy.verdicts.get(*key)
        if verdict is None:
            verdict, _ = await self._flights.do(
                key, lambda: self._decide(policy, target, index, item[1], counted=False)
            )
        if not verdict.ok:
            return None  # decide the child on its own evidence
        return policy.verdicts.get(target.registry, target.repository, str(digest), ring)

    async def _decide(
        self,
        policy: _Verify,
        target: Target,
        digest: Digest,
        body: bytes | None,
        *,
        counted: bool = True,
    ) -> Verdict:
        """Fetch the evidence, verify, remember the verdict (and an index's coverage)."""
        keys, ring = policy.keyring.current()
        started = time.perf_counter()
        evidence = await self._evidence(target, digest)
        verdict = verify_image(str(digest), evidence, keys)
        self._metrics.verify_seconds.labels(target.registry).observe(time.perf_counter() - started)
        if counted:
            result = "verified" if verdict.ok else self._refusal(policy, verdict)
            self._count(target.registry, result)
        if body is None:
            return verdict  # decided, not remembered: the next answer with a body covers
        policy.verdicts.put(target.registry, target.repository, verdict, ring)
        if verdict.ok:
            try:
                children = covered_manifests(body)
            except ArtifactError:
                children = ()  # a manifest, not an index: it covers nothing
            for child in children:
                covering = verdict.covering(child)
                policy.verdicts.put(target.registry, target.repository, covering, ring)
            await self._persist_coverage(target, digest, children)
        log.info(
            "verify %s/%s@%s: %s", target.registry, target.repository, digest, verdict.message()
        )
        return verdict

    async def _persist_coverage(
        self, target: Target, index: Digest, children: tuple[str, ...]
    ) -> None:
        """Write which index pins ``children`` (see the module); a failing disk only costs
        a re-verification of the child after a restart."""
        if self._store is None or not children:
            return
        try:
            await asyncio.to_thread(
                self._store.index.note_coverage, target.registry, target.repository, index, children
            )
        except OSError as exc:
            self._store.health.failed("write", exc)
            log.warning("coverage of index %s not stored: %s", index, exc.strerror or exc)

    async def _evidence(self, target: Target, digest: Digest) -> Evidence:
        """The cosign artifacts of ``digest`` in its own repository (absent ones omitted)."""
        upstream = self._upstreams[target.registry]
        text = str(digest)
        signature = await self._artifact(upstream, target, "manifests", signature_tag(text))
        index = await self._referrers(upstream, target, text)
        bundles: list[bytes] = []
        listed = []
        if index is not None:
            try:
                listed = bundle_referrers(index)
            except ArtifactError as exc:
                log.warning("referrers of %s unreadable, ignored: %s", text, exc)
        for descriptor in listed[:MAX_SIGNATURES]:
            manifest = await self._artifact(upstream, target, "manifests", str(descriptor.digest))
            if manifest is not None and descriptor.mismatch(manifest) is None:
                bundles.append(manifest)
        blobs: dict[str, bytes] = {}
        for blob in blobs_to_fetch(signature, bundles)[:MAX_SIGNATURES]:
            data = await self._artifact(upstream, target, "blobs", blob)
            if data is not None:
                blobs[blob] = data
        return Evidence(signature, tuple(bundles), blobs)

    async def _referrers(self, upstream: Upstream, target: Target, digest: str) -> bytes | None:
        """The referrers index: the API where the registry has it, else the tag fallback."""
        answer = await upstream.fetch(
            "GET",
            f"/v2/{target.repository}/referrers/{digest}",
            scope=f"repository:{target.repository}:pull",
            headers={"Accept": _INDEX_ACCEPT},
            limit=MAX_MANIFEST_BYTES,
        )
        if answer.status == 200:
            return answer.body
        return await self._artifact(
            upstream, target, "manifests", referrers_tag(digest), accept=_INDEX_ACCEPT
        )

    async def _artifact(
        self,
        upstream: Upstream,
        target: Target,
        kind: str,
        reference: str,
        *,
        accept: str = _ACCEPT,
    ) -> bytes | None:
        """One manifest or blob; None when absent (404) or too large to be a signature."""
        limit = MAX_BLOB_BYTES if kind == "blobs" else MAX_MANIFEST_BYTES
        try:
            answer = await upstream.fetch(
                "GET",
                f"/v2/{target.repository}/{kind}/{reference}",
                scope=f"repository:{target.repository}:pull",
                headers={"Accept": accept} if kind == "manifests" else None,
                limit=limit,
            )
        except ManifestInvalid as exc:  # over the limit: no signature artifact is that big
            log.warning("signature artifact %s ignored: %s", reference, exc.message)
            return None
        if answer.status == 404:
            return None
        if answer.status != 200:
            raise UpstreamError(
                f"{target.registry} answered {answer.status} for the signature artifact "
                f"{target.repository}/{kind}/{reference}; cannot verify"
            )
        return answer.body
