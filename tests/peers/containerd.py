"""A private containerd (run as root) with ``ctr`` pulls configured by hosts.toml.

Each :class:`Containerd` has its own ``root``, ``state`` and gRPC socket under a work
directory, so it never touches a system containerd. Plugins a pull does not need (CRI, task
runtimes, cgroup monitor, the non-native snapshotters, tracing, NRI, ``/opt``) are disabled: it
boots in milliseconds and logs little. Unpacking (which ``ctr images pull`` always does) uses
the ``native`` snapshotter, plain directory copies, so no mounts are ever left behind.

Facts about containerd 1.6.20 (Debian) checked against a distribution registry:

- ``ctr ... --hosts-dir DIR`` reads ``DIR/<registry>/hosts.toml``; ``<registry>`` is the host
  part of the reference verbatim, port included (``DIR/127.0.0.1:5000/hosts.toml``).
- A mirror is a ``[host."<scheme>://host:port"]`` table; the scheme is honoured, so an
  ``http://`` mirror needs no ``--plain-http``. ``/v2`` is appended to the URL's path unless
  ``override_path = true``.
- Every request to a mirror carries ``?ns=<registry>`` (URL-encoded, e.g.
  ``ns=127.0.0.1%3A5000``): manifests by tag (HEAD) and digest (GET), and blobs (GET).
- A mirror answering 404 (or any error) is skipped per request: the same request goes to the
  ``server``, without ``ns``. Once a 200 body streams there is no fallback.
- With no hosts.toml for a loopback registry (``127.0.0.1:PORT``), or a ``server`` without
  scheme, containerd talks plain http to it.
- ``ctr content fetch`` fetches without unpacking; content already present is not fetched again,
  so re-download tests must remove images and content first (:meth:`Containerd.reset`).
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .process import ManagedProcess, StartStop, start_until_ready

__all__ = [
    "CONTAINERD_BINARY",
    "CTR_BINARY",
    "Containerd",
    "ContainerdError",
    "CtrResult",
    "ImageRecord",
    "hosts_toml",
    "write_hosts_toml",
]

CONTAINERD_BINARY = "/usr/bin/containerd"
CTR_BINARY = "/usr/bin/ctr"

_DISABLED_PLUGINS = (
    "io.containerd.grpc.v1.cri",
    "io.containerd.snapshotter.v1.aufs",
    "io.containerd.snapshotter.v1.btrfs",
    "io.containerd.snapshotter.v1.devmapper",
    "io.containerd.snapshotter.v1.zfs",
    "io.containerd.snapshotter.v1.overlayfs",
    "io.containerd.internal.v1.opt",
    "io.containerd.internal.v1.restart",
    "io.containerd.internal.v1.tracing",
    "io.containerd.tracing.processor.v1.otlp",
    "io.containerd.monitor.v1.cgroups",
    "io.containerd.runtime.v1.linux",
    "io.containerd.runtime.v2.task",
    "io.containerd.service.v1.tasks-service",
    "io.containerd.grpc.v1.tasks",
    "io.containerd.nri.v1.nri",
)


def _toml_str(value: str) -> str:
    # A JSON string of printable text is a valid TOML basic string.
    return json.dumps(value)


def hosts_toml(
    mirror_urls: str | Sequence[str],
    server_url: str | None,
    *,
    capabilities: Sequence[str] = ("pull", "resolve"),
    skip_verify: bool = False,
    ca: Path | None = None,
    override_path: bool = False,
    headers: Mapping[str, str] | None = None,
) -> str:
    """The text of a hosts.toml: mirrors tried in order, then ``server_url`` (the registry).

    ``mirror_urls`` carry their scheme (``http://127.0.0.1:PORT``); ``skip_verify`` / ``ca``
    apply to https mirrors; ``headers`` are sent to the mirrors with every request.
    """
    mirrors = [mirror_urls] if isinstance(mirror_urls, str) else list(mirror_urls)
    lines: list[str] = []
    if server_url is not None:
        lines += [f"server = {_toml_str(server_url)}", ""]
    for url in mirrors:
        lines.append(f"[host.{_toml_str(url)}]")
        lines.append(f"  capabilities = [{', '.join(_toml_str(c) for c in capabilities)}]")
        if skip_verify:
            lines.append("  skip_verify = true")
        if ca is not None:
            lines.append(f"  ca = {_toml_str(str(ca))}")
        if override_path:
            lines.append("  override_path = true")
        if headers:
            lines.append(f"  [host.{_toml_str(url)}.header]")
            lines += [f"    {_toml_str(k)} = {_toml_str(v)}" for k, v in headers.items()]
        lines.append("")
    return "\n".join(lines)


def write_hosts_toml(
    hosts_dir: Path,
    registry: str,
    mirror_urls: str | Sequence[str],
    server_url: str | None,
    **options: Any,
) -> Path:
    """Write ``hosts_dir/<registry>/hosts.toml`` (see :func:`hosts_toml`, which takes the
    keyword ``options``); return its path.

    ``registry`` is the host of the image references (``docker.io``, ``127.0.0.1:5001``).
    ``server_url`` None leaves containerd's default for the registry (``https://<registry>``).
    """
    path = hosts_dir / registry / "hosts.toml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(hosts_toml(mirror_urls, server_url, **options))
    return path


class ContainerdError(RuntimeError):
    """containerd did not start, or a ``ctr`` command failed (message carries its output)."""


@dataclass(frozen=True, slots=True)
class ImageRecord:
    """One line of ``ctr images ls``."""

    name: str
    media_type: str
    digest: str


@dataclass(frozen=True, slots=True)
class CtrResult:
    """A finished ``ctr`` command."""

    argv: tuple[str, ...]
    stdout: str
    stderr: str
    seconds: float


class Containerd(StartStop):
    """containerd on a unix socket under ``workdir``; a context manager. Needs root.

    ``namespace`` is the containerd namespace every ``ctr`` call uses.
    """

    def __init__(
        self,
        workdir: Path,
        *,
        namespace: str = "cachesvc-test",
        snapshotter: str = "native",
        log_level: str = "info",
        binary: str = CONTAINERD_BINARY,
        ctr_binary: str = CTR_BINARY,
        startup_timeout: float = 15.0,
    ) -> None:
        self.workdir = workdir
        self.namespace = namespace
        self.snapshotter = snapshotter
        self._log_level = log_level
        self._binary = binary
        self._ctr = ctr_binary
        self._startup_timeout = startup_timeout
        self._process: ManagedProcess | None = None

    # -- paths -----------------------------------------------------------------------------

    @property
    def address(self) -> Path:
        """The gRPC unix socket."""
        return self.workdir / "containerd.sock"

    @property
    def config_path(self) -> Path:
        """The generated config.toml."""
        return self.workdir / "config.toml"

    @property
    def log_path(self) -> Path:
        """containerd's log (stderr)."""
        return self.workdir / "containerd.log"

    # -- lifecycle -------------------------------------------------------------------------

    def config_text(self) -> str:
        """The config.toml this instance runs with (version 2 format)."""
        disabled = ", ".join(_toml_str(p) for p in _DISABLED_PLUGINS)
        return "\n".join(
            [
                "version = 2",
                f"root = {_toml_str(str(self.workdir / 'root'))}",
                f"state = {_toml_str(str(self.workdir / 'state'))}",
                f"disabled_plugins = [{disabled}]",
                "",
                "[grpc]",
                f"  address = {_toml_str(str(self.address))}",
                "[ttrpc]",
                f"  address = {_toml_str(str(self.address) + '.ttrpc')}",
                "[debug]",
                f"  level = {_toml_str(self._log_level)}",
                "[metrics]",
                '  address = ""',
                '[plugins."io.containerd.gc.v1.scheduler"]',
                '  startup_delay = "0s"',
                "",
            ]
        )

    def start(self) -> None:
        """Write the config, start containerd and wait until ``ctr version`` answers."""
        if self._process is not None:
            raise RuntimeError("containerd already started")
        if os.geteuid() != 0:
            raise ContainerdError("containerd needs root")
        # A unix socket path is limited to 107 bytes.
        if len(str(self.address)) + len(".ttrpc") > 107:
            raise ContainerdError(f"socket path too long: {self.address}")
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(self.config_text())
        self._process = start_until_ready(
            lambda: ManagedProcess(
                [self._binary, "--config", str(self.config_path)],
                stdout_path=self.workdir / "containerd.stdout",
                stderr_path=self.log_path,
                env=_clean_env(),
            ),
            self._answers,
            name="containerd",
            timeout=self._startup_timeout,
            error=ContainerdError,
        )

    def _answers(self) -> bool:
        """Does ``ctr version`` get an answer?"""
        if not self.address.exists():
            return False
        done = subprocess.run(
            self._ctr_argv("version"), capture_output=True, env=_clean_env(), timeout=5, check=False
        )
        return done.returncode == 0

    def stop(self) -> None:
        """Stop containerd (idempotent). Its root and log stay for inspection."""
        proc, self._process = self._process, None
        if proc is not None:
            proc.stop(grace=10.0)

    # -- ctr -------------------------------------------------------------------------------

    def _ctr_argv(self, *args: str) -> list[str]:
        return [self._ctr, "--address", str(self.address), "--namespace", self.namespace, *args]

    def ctr(self, *args: str, timeout: float = 300.0) -> CtrResult:
        """Run ``ctr --address SOCK --namespace NS ARGS...``; ContainerdError on failure."""
        argv = self._ctr_argv(*args)
        start = time.monotonic()
        try:
            done = subprocess.run(
                argv,
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                env=_clean_env(),
                timeout=timeout,
                check=False,
            )
        except subprocess.TimeoutExpired as exc:
            raise ContainerdError(f"timed out after {timeout}s: {' '.join(argv)}") from exc
        seconds = time.monotonic() - start
        if done.returncode != 0:
            raise ContainerdError(
                f"exit {done.returncode}: {' '.join(argv)}\n"
                f"--- stdout ---\n{done.stdout[-3000:]}\n--- stderr ---\n{done.stderr[-3000:]}"
            )
        return CtrResult(tuple(argv), done.stdout, done.stderr, seconds)

    @staticmethod
    def _platform_args(platform: str | None) -> list[str]:
        if platform is None:
            return []
        if platform == "all":
            return ["--all-platforms"]
        return ["--platform", platform]

    def pull(
        self,
        ref: str,
        hosts_dir: Path,
        *,
        platform: str | None = None,
        extra_args: Sequence[str] = (),
        timeout: float = 300.0,
    ) -> CtrResult:
        """``ctr images pull --hosts-dir``: fetch and unpack (native snapshotter).

        ``platform`` None: this machine's platform; ``"all"``: every platform; else e.g.
        ``linux/arm64``.
        """
        return self.ctr(
            "images",
            "pull",
            "--hosts-dir",
            str(hosts_dir),
            "--snapshotter",
            self.snapshotter,
            *self._platform_args(platform),
            *extra_args,
            ref,
            timeout=timeout,
        )

    def content_fetch(
        self,
        ref: str,
        hosts_dir: Path,
        *,
        platform: str | None = None,
        extra_args: Sequence[str] = (),
        timeout: float = 300.0,
    ) -> CtrResult:
        """``ctr content fetch --hosts-dir``: fetch without unpacking (creates the image record)."""
        return self.ctr(
            "content",
            "fetch",
            "--hosts-dir",
            str(hosts_dir),
            *self._platform_args(platform),
            *extra_args,
            ref,
            timeout=timeout,
        )

    def list_images(self) -> list[ImageRecord]:
        """Images in the namespace (``ctr images ls``)."""
        out = self.ctr("images", "ls").stdout.splitlines()
        records = []
        for line in out[1:]:  # header: REF TYPE DIGEST SIZE PLATFORMS LABELS
            fields = line.split()
            if len(fields) >= 3:
                records.append(ImageRecord(name=fields[0], media_type=fields[1], digest=fields[2]))
        return records

    def image_digest(self, ref: str) -> str:
        """The target digest of image ``ref``; KeyError when absent."""
        for record in self.list_images():
            if record.name == ref:
                return record.digest
        raise KeyError(ref)

    def list_content(self) -> list[str]:
        """Digests of every blob in the content store (``ctr content ls -q``)."""
        return [line for line in self.ctr("content", "ls", "-q").stdout.split() if line]

    def remove_image(self, ref: str) -> None:
        """``ctr images rm --sync``: remove the image and wait for garbage collection."""
        self.ctr("images", "rm", "--sync", ref)

    def remove_all_content(self) -> None:
        """Remove every blob from the content store, referenced or not."""
        digests = self.list_content()
        if digests:
            self.ctr("content", "rm", *digests)

    def reset(self) -> None:
        """Remove every image, blob and snapshot, so that the next pull downloads everything.

        Raises ContainerdError when something is still left.
        """
        images = [r.name for r in self.list_images()]
        if images:
            self.ctr("images", "rm", "--sync", *images)
        self.remove_all_content()
        snapshots = self._list_snapshots()
        # Children first: remove in reverse creation order until none is left.
        for _ in range(len(snapshots) + 1):
            if not snapshots:
                break
            for key in reversed(snapshots):
                try:
                    self.ctr("snapshots", "--snapshotter", self.snapshotter, "rm", key)
                except ContainerdError:
                    continue  # still has children; next round
            snapshots = self._list_snapshots()
        left_images, left_content = self.list_images(), self.list_content()
        if left_images or left_content or snapshots:
            raise ContainerdError(
                f"reset left images={left_images} content={left_content} snapshots={snapshots}"
            )

    def _list_snapshots(self) -> list[str]:
        out = self.ctr("snapshots", "--snapshotter", self.snapshotter, "ls").stdout
        return [line.split()[0] for line in out.splitlines()[1:] if line.strip()]


def _clean_env() -> dict[str, str]:
    # ctr honours HTTP(S)_PROXY; the peers are all on loopback.
    drop = {"http_proxy", "https_proxy", "all_proxy", "containerd_address", "containerd_namespace"}
    drop |= {"containerd_snapshotter"}
    return {k: v for k, v in os.environ.items() if k.lower() not in drop}
