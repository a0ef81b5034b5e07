"""The domain facade handlers call: routing, manifests, blobs, tag lists, referrers.

No aiohttp.web here: the mirror takes parsed values and returns plain answers.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import parse_qsl, urlencode

from cachesvc.config import Config
from cachesvc.errors import NameUnknown, TagInvalid, UpstreamError
from cachesvc.mirror.blobs import BlobAnswer, Blobs
from cachesvc.mirror.gate import Gate
from cachesvc.mirror.manifestcache import ManifestAnswer
from cachesvc.mirror.manifests import Manifests
from cachesvc.mirror.routing import Router, Target
from cachesvc.oci import MEDIA_OCI_INDEX, Digest, is_digest, validate_tag
from cachesvc.upstream.client import Upstream

_EMPTY_INDEX = json.dumps(
    {"schemaVersion": 2, "mediaType": MEDIA_OCI_INDEX, "manifests": []}, separators=(",", ":")
).encode()


@dataclass(frozen=True, slots=True)
class Passthrough:
    """A small upstream answer relayed to the client (tag lists, referrers)."""

    status: int
    content_type: str
    body: bytes
    link: str | None = None
    upstream: str | None = None  # the endpoint that answered


class Mirror:
    """What the mirror API can do, independent of HTTP."""

    def __init__(
        self,
        config: Config,
        router: Router,
        manifests: Manifests,
        blobs: Blobs,
        upstreams: Mapping[str, Upstream],
        gate: Gate,
    ) -> None:
        self._config = config
        self.gate = gate
        self.router = router
        self.manifests = manifests
        self.blobs = blobs
        self._upstreams = upstreams

    async def manifest(
        self, target: Target, reference: str, accept: tuple[str, ...], *, head: bool
    ) -> ManifestAnswer:
        """A manifest by tag or digest (the policy's decisions first and last)."""
        held = self.held_manifest(target, reference, accept, head=head)
        if held is not None:
            return held
        self.gate.admit(target)
        answer = await self._manifest(target, reference, accept, head=head)
        if self.gate.verifies(target.registry) and not answer.vetted:  # one decision a request
            body = answer.body
            if body is None:  # HEAD: an index's coverage needs its bytes
                cached = self.manifests.cached(answer.record.digest)
                body = cached[1] if cached is not None else None
            await self.gate.vet(target, answer.record.digest, body)
        return answer

    def held_manifest(
        self, target: Target, reference: str, accept: tuple[str, ...], *, head: bool
    ) -> ManifestAnswer | None:
        """A manifest answered from memory with no await, policy included (by digest, or
        a tag confirmed within its ``tag_ttl``), or None: then ``manifest`` decides (a
        miss, a tag to revalidate, a verdict not yet remembered, a refusal). The one place
        a held hit is decided, for aiohttp's handler and ``cachesvc.server.fastpath`` alike."""

        def passes(digest: Digest) -> bool:
            return self.gate.passes_held(target, digest)

        if is_digest(reference):
            return self.manifests.held(reference, head=head, passes=passes)
        ttl = self._config.registries[target.registry].tag_ttl
        return self.manifests.held_tag(target, reference, accept, head=head, ttl=ttl, passes=passes)

    async def _manifest(
        self, target: Target, reference: str, accept: tuple[str, ...], *, head: bool
    ) -> ManifestAnswer:
        if is_digest(reference):
            return await self.manifests.by_digest(target, reference, head=head)
        ttl = self._config.registries[target.registry].tag_ttl
        return await self.manifests.by_tag(target, reference, accept, head=head, ttl=ttl)

    async def blob(self, target: Target, digest: Digest, *, unsized_ok: bool = True) -> BlobAnswer:
        """A blob to send (cached or filling; see ``Blobs.get``), a context manager."""
        self.gate.admit(target)
        return await self.blobs.get(target, digest, unsized_ok=unsized_ok)

    async def blob_size(self, target: Target, digest: Digest) -> tuple[int, str, str | None]:
        """A blob's size for HEAD (and the upstream endpoint asked), without downloading it."""
        self.gate.admit(target)
        return await self.blobs.stat(target, digest)

    async def tags(self, target: Target, n: str | None, last: str | None) -> Passthrough:
        """``tags/list`` from upstream, its ``Link`` rewritten to route back here."""
        self.gate.admit(target)
        params: dict[str, str] = {}
        if n is not None:
            if not n.isdigit() or not 0 < int(n) <= 10000:
                raise TagInvalid("n must be a number from 1 to 10000")
            params["n"] = n
        if last is not None:
            params["last"] = validate_tag(last)
        answer = await self._upstreams[target.registry].fetch(
            "GET",
            f"/v2/{target.repository}/tags/list",
            scope=f"repository:{target.repository}:pull",
            params=params,
        )
        if answer.status == 404:
            raise NameUnknown(f"repository {target.registry}/{target.repository} not found")
        if answer.status != 200:
            raise UpstreamError(f"{target.registry} answered {answer.status} for tags/list")
        return Passthrough(
            200,
            "application/json",
            answer.body,
            self._next_link(target, answer.headers.get("Link")),
            answer.endpoint,
        )

    @staticmethod
    def _next_link(target: Target, link: str | None) -> str | None:
        if not link or "<" not in link or ">" not in link:
            return None
        url = link[link.index("<") + 1 : link.index(">")]
        _, _, query = url.partition("?")
        params = [(k, v) for k, v in parse_qsl(query) if k in ("n", "last")]
        if target.via_ns:
            params.append(("ns", target.registry))
        return f'</v2/{target.client_name}/tags/list?{urlencode(params)}>; rel="next"'

    async def referrers(
        self, target: Target, digest: Digest, artifact_type: str | None
    ) -> Passthrough:
        """The referrers index from upstream; an empty index where upstream has none."""
        self.gate.admit(target)
        params = {"artifactType": artifact_type[:200]} if artifact_type else None
        answer = await self._upstreams[target.registry].fetch(
            "GET",
            f"/v2/{target.repository}/referrers/{digest}",
            scope=f"repository:{target.repository}:pull",
            params=params,
        )
        if answer.status != 200:
            return Passthrough(200, MEDIA_OCI_INDEX, _EMPTY_INDEX, upstream=answer.endpoint)
        content_type = answer.headers.get("Content-Type", MEDIA_OCI_INDEX)
        return Passthrough(200, content_type, answer.body, upstream=answer.endpoint)
