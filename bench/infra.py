"""What a benchmark runs against: a registry, an emulated WAN link to it, containerd
(for ctr / ctr-remote peers) and base images, all from tests.support so that the
benchmarks use exactly the parts the tests do."""

from __future__ import annotations

import contextlib
import shutil
import tempfile
from pathlib import Path
from types import TracebackType
from typing import Any

import httpx

from tests.support import imagebuild, rootfs
from tests.support.containerd import Containerd
from tests.support.dockerd import Dockerd
from tests.support.registry import Registry
from tests.support.wanproxy import WanProxy

# Base images: name -> Debian packages on top of minbase (none = plain Debian).
BASE_IMAGES: dict[str, list[str]] = {
    "debian": [],
    "gcc": rootfs.GCC_PACKAGES,
    "golang": rootfs.GOLANG_PACKAGES,
    "jre": rootfs.JRE_PACKAGES,
}

# The link every WAN figure uses; stated in each report section.
WAN_LATENCY_S = 0.020
WAN_BANDWIDTH_BITS = 100e6
WAN_DESCRIPTION = (
    f"user-space TCP proxy adding {WAN_LATENCY_S * 1000:.0f} ms each way "
    f"({2 * WAN_LATENCY_S * 1000:.0f} ms RTT) and {WAN_BANDWIDTH_BITS / 1e6:.0f} Mbit/s "
    "per direction in front of the registry"
)

# Said in the setup of the sections whose figures depend on how lazy layers are served.
LAYER_FORMAT_LINE = (
    "- lazybuild serves lazy layers as kernel EROFS images (only the image's bytes go through FUSE)"
)

MANIFEST_ACCEPT = ", ".join(
    [
        "application/vnd.oci.image.manifest.v1+json",
        "application/vnd.docker.distribution.manifest.v2+json",
    ]
)


class BenchInfra(contextlib.AbstractContextManager["BenchInfra"]):
    """Started lazily, torn down together; use as a context manager."""

    def __init__(self) -> None:
        self.workdir = Path(tempfile.mkdtemp(prefix="lazybuild-bench-"))
        self._stack = contextlib.ExitStack()
        self._registry: Registry | None = None
        self._wan: WanProxy | None = None
        self._containerd: Containerd | None = None
        self._dockerd: Dockerd | None = None
        self._pushed: dict[str, str] = {}

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._stack.close()
        shutil.rmtree(self.workdir, ignore_errors=True)

    @property
    def registry(self) -> Registry:
        if self._registry is None:
            self._registry = self._stack.enter_context(Registry(self.workdir / "registry"))
        return self._registry

    @property
    def wan(self) -> WanProxy:
        """The registry behind the emulated link; `.host` replaces the registry's host."""
        if self._wan is None:
            proxy = WanProxy(
                self.registry.host, latency=WAN_LATENCY_S, bandwidth_bits=WAN_BANDWIDTH_BITS
            )
            self._wan = self._stack.enter_context(proxy)
        return self._wan

    @property
    def containerd(self) -> Containerd:
        if self._containerd is None:
            daemon = Containerd(self.workdir / "containerd")
            self._containerd = self._stack.enter_context(daemon)
        return self._containerd

    @property
    def dockerd(self) -> Dockerd:
        """A private dockerd (own data root, no bridge, no iptables) for docker peers."""
        if self._dockerd is None:
            self._dockerd = self._stack.enter_context(Dockerd(self.workdir / "dockerd"))
        return self._dockerd

    def base_image(self, name: str) -> str:
        """Push base image `name` (see BASE_IMAGES, plain gzip layers) once; its reference
        on the registry's direct host, e.g. "127.0.0.1:PORT/bench/gcc:gzip"."""
        if name not in self._pushed:
            base = rootfs.debootstrap_rootfs("minbase", [])
            packages = BASE_IMAGES[name]
            if packages:
                with_packages = rootfs.debootstrap_rootfs("minbase", packages)
                layout = imagebuild.cached_builder_image(base, with_packages)
            else:
                layout = imagebuild.cached_rootfs_image(base)
            imagebuild.push_oci_layout(layout, self.registry.host, f"bench/{name}", "gzip")
            self._pushed[name] = f"{self.registry.host}/bench/{name}:gzip"
        return self._pushed[name]

    def manifest(self, ref: str) -> dict[str, Any]:
        """The image manifest of `ref` (HOST/REPO:TAG) read back from the registry."""
        host, _, rest = ref.partition("/")
        repo, _, tag = rest.rpartition(":")
        response = httpx.get(
            f"http://{host}/v2/{repo}/manifests/{tag}",
            headers={"Accept": MANIFEST_ACCEPT},
            timeout=30,
        )
        response.raise_for_status()
        manifest: dict[str, Any] = response.json()
        return manifest

    def compressed_size(self, ref: str) -> int:
        """Sum of the layer sizes in `ref`'s manifest (what a client downloads)."""
        return sum(int(layer["size"]) for layer in self.manifest(ref)["layers"])
