"""Policy cost: manifest requests/s with ``verify`` on vs off, and the first verification.

``python -m benchmarks.policy [--seconds 5] [--reps 3]`` starts the distribution registry
(upstream) and two cachesvc processes in front of it, one plain and one with
``verify.keys`` (and ``allow``); pushes a signed image (cosign simple signing, built by
tests/peers/cosign.py with a key generated here); then

- first verification: a cold GET by digest of a fresh signed image, on each cachesvc (the
  difference is what verifying costs: the ``.sig`` manifest, the referrers lookup with its
  tag fallback, the signature blob, the ECDSA check), plus cachesvc's own
  ``cachesvc_policy_verify_seconds``;
- cached: wrk (one thread, 32 connections) on a manifest by digest and by tag, both
  cachesvc processes interleaved, ``--reps`` times; the medians and their ratio (goal:
  verify on within 5 % of off).

Writes benchmarks/results/policy.md and prints it. Loopback only; every child is stopped.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import json
import re
import statistics
import tempfile
import time
from pathlib import Path

import aiohttp
from cryptography.hazmat.primitives.asymmetric import ec

from benchmarks.load import request_rate
from benchmarks.systems import (
    Service,
    _ready,
    cachesvc_ready_url,
    spawn_cachesvc,
    start_registry,
    write_cachesvc_config,
)
from tests.peers import cosign

RESULTS = Path(__file__).parent / "results" / "policy.md"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
ACCEPT = {"Accept": f"{OCI_MANIFEST}, application/vnd.oci.image.index.v1+json"}
CONNECTIONS = 32


def _digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


async def _blob(session: aiohttp.ClientSession, url: str, repo: str, data: bytes) -> None:
    async with session.post(f"{url}/v2/{repo}/blobs/uploads/") as started:
        location = started.headers["Location"]
    location = url + location if location.startswith("/") else location
    sep = "&" if "?" in location else "?"
    async with session.put(f"{location}{sep}digest={_digest(data)}", data=data) as done:
        assert done.status == 201, done.status


async def _manifest(
    session: aiohttp.ClientSession, url: str, repo: str, ref: str, body: bytes
) -> None:
    headers = {"Content-Type": OCI_MANIFEST}
    async with session.put(f"{url}/v2/{repo}/manifests/{ref}", data=body, headers=headers) as r:
        assert r.status == 201, await r.text()


async def push_signed(
    session: aiohttp.ClientSession, url: str, repo: str, tag: str, key: ec.EllipticCurvePrivateKey
) -> str:
    """A one-layer image as ``repo:tag`` and its cosign ``.sig``; returns the image digest."""
    layer, config = tag.encode() * 64, json.dumps({"os": "linux", "tag": tag}).encode()
    for blob in (layer, config):
        await _blob(session, url, repo, blob)
    manifest = json.dumps({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "size": len(config), "digest": _digest(config)},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar",
                    "size": len(layer), "digest": _digest(layer)}],
    }).encode()  # fmt: skip
    await _manifest(session, url, repo, tag, manifest)
    digest = _digest(manifest)
    payload = cosign.simple_signing_payload(digest, f"{url.partition('//')[2]}/{repo}")
    signature = base64.b64encode(cosign.sign_bytes(key, payload)).decode()
    artifact = cosign.signature_manifest([(payload, signature)])
    for blob in artifact.blobs.values():
        await _blob(session, url, repo, blob)
    await _manifest(session, url, repo, digest.replace(":", "-") + ".sig", artifact.manifest)
    return digest


def start(workdir: Path, upstream: Service, name: str, policy: str) -> tuple[Service, int]:
    storage = workdir / f"{name}-storage"
    storage.mkdir()
    config, port, admin = write_cachesvc_config(workdir, name, storage, upstream)
    config.write_text(config.read_text() + policy + "log: {access_log: false}\n")
    service = Service(name, f"127.0.0.1:{port}", spawn_cachesvc(workdir, name, config))
    _ready(service, cachesvc_ready_url(admin))
    return service, admin


async def cold_ms(session: aiohttp.ClientSession, url: str) -> float:
    started = time.perf_counter()
    async with session.get(url, headers=ACCEPT) as resp:
        await resp.read()
        assert resp.status == 200, resp.status
    return (time.perf_counter() - started) * 1000


async def verify_seconds(session: aiohttp.ClientSession, admin: int) -> tuple[float, float]:
    async with session.get(f"http://127.0.0.1:{admin}/metrics") as resp:
        text = await resp.text()
    name = "cachesvc_policy_verify_seconds"
    total = sum(float(v) for v in re.findall(name + r"_sum\{.*\} (\S+)", text))
    count = sum(float(v) for v in re.findall(name + r"_count\{.*\} (\S+)", text))
    return total, count


async def run(seconds: float, reps: int, fresh: int) -> str:
    with tempfile.TemporaryDirectory(prefix="policy-bench-") as tmp:
        workdir = Path(tmp)
        key = ec.generate_private_key(ec.SECP256R1())
        key_file = workdir / "release.pub"
        key_file.write_bytes(cosign.public_pem(key))
        upstream = start_registry("upstream", workdir)
        services: list[Service] = []
        try:
            async with aiohttp.ClientSession() as session:
                repo = "dev-team/app"
                digest = await push_signed(session, upstream.url, repo, "v1", key)
                colds = [await push_signed(session, upstream.url, repo, f"c{i}", key)
                         for i in range(2 * fresh)]  # fmt: skip
                guarded = (f'    allow: ["dev-team/*"]\n'
                           f'    verify: {{keys: ["{key_file}"]}}\n')  # fmt: skip
                off, _ = start(workdir, upstream, "verify-off", "")
                on, admin = start(workdir, upstream, "verify-on", guarded)
                services += [off, on]
                ns = f"?ns={upstream.host}"
                first: dict[str, list[float]] = {"verify-off": [], "verify-on": []}
                for i in range(fresh):  # a fresh image each time: nothing cached anywhere
                    for service, image in ((off, colds[2 * i]), (on, colds[2 * i + 1])):
                        url = f"{service.url}/v2/{repo}/manifests/{image}{ns}"
                        first[service.name].append(await cold_ms(session, url))
                total, count = await verify_seconds(session, admin)
                rates: dict[tuple[str, str], list[float]] = {}
                for _ in range(reps):
                    for label, ref in (("by digest", digest), ("by tag", "v1")):
                        for service in (off, on):
                            url = f"{service.url}/v2/{repo}/manifests/{ref}{ns}"
                            await cold_ms(session, url)  # warm: verdict and tag cached
                            rate = await request_rate(url, CONNECTIONS, seconds, ACCEPT)
                            if rate.non_2xx or rate.errors:
                                raise RuntimeError(f"{service.name} {label}: {rate}")
                            rates.setdefault((label, service.name), []).append(
                                rate.requests_per_second
                            )
        finally:
            for service in services:
                service.stop()
            upstream.stop()
    return report(rates, first, total, count, seconds, reps)


def report(
    rates: dict[tuple[str, str], list[float]],
    first: dict[str, list[float]],
    total: float,
    count: float,
    seconds: float,
    reps: int,
) -> str:
    lines = [
        "# Policy benchmark (`python -m benchmarks.policy`)",
        "",
        f"{time.strftime('%Y-%m-%d %H:%M')}, loopback, wrk -t1 -c{CONNECTIONS} for {seconds:.0f} s,"
        f" {reps} repetitions interleaved (medians); cached verdicts and tags.",
        "",
        "| manifest request | verify off (req/s) | verify on (req/s) | on / off |",
        "|---|---|---|---|",
    ]
    for label in ("by digest", "by tag"):
        off = statistics.median(rates[(label, "verify-off")])
        on = statistics.median(rates[(label, "verify-on")])
        lines.append(f"| {label} | {off:.0f} | {on:.0f} | {on / off:.3f} |")
    off_ms = statistics.median(first["verify-off"])
    on_ms = statistics.median(first["verify-on"])
    lines += [
        "",
        "| first request of a fresh signed image, by digest | median ms |",
        "|---|---|",
        f"| verify off (manifest fetched upstream) | {off_ms:.1f} |",
        f"| verify on (manifest + signature fetched and verified) | {on_ms:.1f} |",
        f"| cachesvc_policy_verify_seconds, mean of {count:.0f} "
        f"| {1000 * total / max(count, 1):.1f} |",
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--fresh", type=int, default=5, help="cold images per cachesvc")
    args = parser.parse_args()
    text = asyncio.run(run(args.seconds, args.reps, args.fresh))
    RESULTS.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
