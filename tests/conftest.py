"""Session fixtures that start real daemons (Debian packages) on loopback.

Daemons are started once per session and always stopped and reaped at teardown,
including when tests fail. Heavy artefacts (root filesystems) are cached across
sessions under $LAZYBUILD_TEST_CACHE.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.support import imagebuild, rootfs
from tests.support.containerd import Containerd
from tests.support.dockerd import Dockerd
from tests.support.registry import Registry, TokenRegistry
from tests.support.wanproxy import WanProxy


def _require_root(what: str) -> None:
    if os.geteuid() != 0:
        pytest.skip(f"{what} needs root")


@pytest.fixture(scope="session")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    """Open docker-registry 2.8: `.host` ("127.0.0.1:PORT"), `.url`, `.root` (storage dir)."""
    server = Registry(tmp_path_factory.mktemp("registry"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def token_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TokenRegistry]:
    """docker-registry with `auth: token`: `.host`, `.url`, `.root`, `.username`,
    `.password`, `.token_server` (issued tokens in `.token_server.issued`)."""
    server = TokenRegistry(tmp_path_factory.mktemp("token-registry"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def debian_rootfs() -> Path:
    """Debian bookworm minbase root filesystem (cached, read-only: copy before changing)."""
    _require_root("debootstrap")
    return rootfs.debootstrap_rootfs("minbase", [])


@pytest.fixture(scope="session")
def python_rootfs() -> Path:
    """Debian bookworm minbase + python3 (cached, read-only)."""
    _require_root("debootstrap")
    return rootfs.debootstrap_rootfs("minbase", rootfs.PYTHON_PACKAGES)


@pytest.fixture(scope="session")
def debian_image_layout(debian_rootfs: Path) -> Path:
    """OCI layout (tag "latest", 3 plain gzip layers) of `debian_rootfs` (cached, read-only)."""
    return imagebuild.cached_rootfs_image(debian_rootfs)


@pytest.fixture(scope="session")
def debian_image(registry: Registry, debian_image_layout: Path) -> str:
    """`debian_image_layout` pushed to the `registry` fixture; the reference
    "127.0.0.1:PORT/test/debian:latest"."""
    imagebuild.push_oci_layout(debian_image_layout, registry.host, "test/debian", "latest")
    return f"{registry.host}/test/debian:latest"


@pytest.fixture(scope="session")
def tiny_image_layout(debian_rootfs: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """~1 MB 3-layer OCI layout from `debian_rootfs` with a whiteout/opaque upper layer
    (see imagebuild.tiny_image): has /usr/bin/echo, /usr/bin/cat, /hello.txt."""
    layout_dir = tmp_path_factory.mktemp("tiny-image") / "layout"
    imagebuild.tiny_image(layout_dir, debian_rootfs)
    return layout_dir


@pytest.fixture(scope="session")
def tiny_image(registry: Registry, tiny_image_layout: Path) -> str:
    """`tiny_image_layout` pushed to `registry`: "127.0.0.1:PORT/test/tiny:latest"."""
    imagebuild.push_oci_layout(tiny_image_layout, registry.host, "test/tiny", "latest")
    return f"{registry.host}/test/tiny:latest"


@pytest.fixture(scope="session")
def containerd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Containerd]:
    """Private containerd: `.ctr(*args)`, `.ctr_remote(*args)`, `.pull(ref)`, `.push(ref)`,
    `.convert_to_estargz(src, dst)`, `.convert_local(src, dst)`, `.run_image(ref, *cmd)`."""
    _require_root("containerd")
    daemon = Containerd(tmp_path_factory.mktemp("containerd"))
    daemon.start()
    try:
        yield daemon
    finally:
        daemon.stop()


@pytest.fixture(scope="session")
def dockerd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Dockerd]:
    """Private dockerd 20.10 (overlay2, no networking): `.docker(*args)`, `.socket`,
    `.host` ("unix://..."), `.config_dir` (the CLI's DOCKER_CONFIG), `.env()`."""
    _require_root("dockerd")
    daemon = Dockerd(tmp_path_factory.mktemp("dockerd"))
    daemon.start()
    try:
        yield daemon
    finally:
        daemon.stop()


@pytest.fixture
def wan_proxy() -> Iterator[Callable[..., WanProxy]]:
    """Factory `wan_proxy(upstream_host, latency=0.020, bandwidth_bits=100e6) -> WanProxy`
    (started; `.host`, byte counters); every proxy made is stopped after the test."""
    made: list[WanProxy] = []

    def make(
        upstream: str, latency: float = 0.020, bandwidth_bits: float | None = 100e6
    ) -> WanProxy:
        proxy = WanProxy(upstream, latency=latency, bandwidth_bits=bandwidth_bits).start()
        made.append(proxy)
        return proxy

    try:
        yield make
    finally:
        for proxy in made:
            proxy.stop()


@pytest.fixture(scope="session")
def wan_registry(registry: Registry) -> Iterator[WanProxy]:
    """The `registry` fixture behind a 20 ms / 100 Mbit/s emulated link. Shared by the
    session: call `.reset_counters()` before measuring. Reach it at `.host`."""
    proxy = WanProxy(registry.host).start()
    try:
        yield proxy
    finally:
        proxy.stop()
