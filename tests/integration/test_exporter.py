"""The exporter against a real registry, dockerd and the Go eStargz reader.

The image is the tiny base image (three remote layers, left in the registry) plus one
local layer made by hand in overlayfs form: a replaced file, a whiteout (0/0 character
device) and an opaque directory (trusted.overlay.opaque). It is pushed (base layers
must be mounted, never downloaded), written as OCI and docker tarballs, loaded into
dockerd and run.
"""

from __future__ import annotations

import os
import stat
import tarfile
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from lazybuild.estargz.writer import WriterOptions
from lazybuild.exporter import (
    BuiltImage,
    DockerOutput,
    ExportResult,
    ImageOutput,
    OciOutput,
    OutputSpec,
    export_image,
)
from lazybuild.frontend.dockerfile.imageconfig import ImageConfigState
from lazybuild.oci import mediatypes
from lazybuild.oci.platform import host_platform
from lazybuild.registry.client import RegistryClient
from lazybuild.registry.reference import Reference
from lazybuild.worker.layers import LocalLayer, RemoteLayer
from lazybuild.worker.layerstore import LayerStore
from tests.support.dockerd import Dockerd
from tests.support.gochecker import build_go_checker, go_available, run_go_checker
from tests.support.images import read_layout_image
from tests.support.registry import Registry
from tests.support.trees import flatten, layer_tree
from tests.support.wanproxy import WanProxy

pytestmark = pytest.mark.root

GREETING = b"hello from lazybuild\n"


class RecordingTransport(httpx.AsyncBaseTransport):
    """Every request the registry client sends, as (method, path, query)."""

    def __init__(self) -> None:
        self.inner = httpx.AsyncHTTPTransport()
        self.requests: list[tuple[str, str, str]] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.requests.append((request.method, request.url.path, str(request.url.query)))
        return await self.inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self.inner.aclose()


@dataclass(frozen=True)
class Build:
    image: BuiltImage
    store: LayerStore
    base_digests: list[str]


def _local_layer(store: LayerStore) -> LocalLayer:
    """An upper directory as a RUN step leaves it, over the tiny image."""
    upper = store.layers_dir / "step-1"
    (upper / "usr" / "bin").mkdir(parents=True)
    (upper / "opt" / "data").mkdir(parents=True)
    (upper / "hello.txt").write_bytes(GREETING)
    os.mknod(upper / "usr" / "bin" / "echo", stat.S_IFCHR, os.makedev(0, 0))  # whiteout
    os.setxattr(upper / "opt" / "data", "trusted.overlay.opaque", b"y")
    (upper / "opt" / "data" / "fresh.txt").write_bytes(b"fresh\n")
    return LocalLayer("step-1", upper)


@pytest.fixture(scope="module")
def build(tiny_image: str, tmp_path_factory: pytest.TempPathFactory) -> Build:
    async def resolve() -> Any:
        async with RegistryClient() as client:
            return await client.resolve_image(Reference.parse(tiny_image), host_platform())

    base = trio.run(resolve)
    diff_ids = base.config["rootfs"]["diff_ids"]
    remote = [
        RemoteLayer(descriptor, str(base.ref), diff_id)
        for descriptor, diff_id in zip(base.manifest.layers, diff_ids, strict=True)
    ]
    store = LayerStore(tmp_path_factory.mktemp("exporter-state"))
    state = ImageConfigState.from_oci_config(base.config)
    config = state.to_oci_config()
    # The base history keeps its own times; the new step's entry gets the image's.
    config["history"] = [*base.config["history"], {"created_by": "RUN make-greeting"}]
    image = BuiltImage((*remote, _local_layer(store)), config, source_date_epoch=1_700_000_000)
    return Build(image, store, [layer.descriptor.digest for layer in remote])


@pytest.fixture(scope="module")
def checker(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    if not go_available():
        pytest.skip("the `go` toolchain is not installed")
    cache = getattr(request.config, "cache", None)
    if cache is not None:
        return build_go_checker(Path(cache.mkdir("estargz-gochecker")))
    return build_go_checker(tmp_path_factory.mktemp("gochecker"))


@asynccontextmanager
async def _no_rootfs() -> AsyncIterator[Path]:
    raise AssertionError("no type=local output here")
    yield Path()


def _export(
    build: Build,
    outputs: list[OutputSpec],
    transport: httpx.AsyncBaseTransport | None = None,
    **options: Any,
) -> tuple[ExportResult, list[str]]:
    lines: list[str] = []

    async def main() -> ExportResult:
        async with RegistryClient(transport=transport) as client:
            return await export_image(
                build.image,
                outputs,
                store=build.store,
                registry=client,
                rootfs=_no_rootfs,
                writer_options=WriterOptions(chunk_size=64 * 1024),
                progress=lines.append,
                **options,
            )

    return trio.run(main), lines


def _unique(host: str, repository: str) -> str:
    return f"{host}/{repository}-{uuid.uuid4().hex[:8]}:v1"


def test_push_mounts_base_layers_and_never_downloads_them(
    build: Build, registry: Registry, checker: Path, tmp_path: Path
) -> None:
    name = _unique(registry.host, "exported/mount")
    transport = RecordingTransport()
    result, _ = _export(build, [ImageOutput((name,), push=True)], transport)

    (report,) = result.pushes
    assert sorted(report.mounted) == sorted(build.base_digests)
    assert report.copied == []
    assert result.image is not None
    local = result.image.layers[-1].descriptor
    assert report.uploaded == [local.digest]
    assert report.manifest_digest == result.manifest_digest
    base_blob_requests = [
        r for r in transport.requests if any(d in r[1] for d in build.base_digests)
    ]
    assert [r for r in base_blob_requests if r[0] not in ("HEAD",)] == []
    mounts = [r for r in transport.requests if r[0] == "POST" and "mount=" in r[2]]
    assert len(mounts) == len(build.base_digests)

    async def pull_back() -> tuple[Any, bytes]:
        async with RegistryClient() as client:
            ref = Reference.parse(name)
            pulled = await client.resolve_image(ref, host_platform())
            return pulled, await client.get_blob(ref, local)

    pulled, blob = trio.run(pull_back)
    assert pulled.manifest_digest == result.manifest_digest
    assert pulled.config["rootfs"]["diff_ids"][-1] == result.image.layers[-1].diff_id
    assert pulled.config["history"][-1] == {
        "created": "2023-11-14T22:13:20Z",
        "created_by": "RUN make-greeting",
    }
    assert pulled.config["history"][0]["created"] == "2024-01-01T00:00:00Z"
    assert pulled.manifest.layers[-1].annotations == local.annotations
    (tmp_path / "layer").write_bytes(blob)
    run_go_checker(checker, tmp_path / "layer", local.annotations[mediatypes.TOC_DIGEST_ANNOTATION])


def test_push_to_another_registry_streams_base_layers_through(
    build: Build, registry: Registry, wan_proxy: Callable[..., WanProxy]
) -> None:
    # The same storage under another host name: a different registry to the client.
    other = wan_proxy(registry.host, latency=0.0, bandwidth_bits=None)
    name = _unique(other.host, "exported/copied")
    result, lines = _export(build, [ImageOutput((name,), push=True)])
    (report,) = result.pushes
    assert sorted(report.copied) == sorted(build.base_digests)
    assert any("copying it through" in line for line in lines)


def test_oci_tarball_is_a_layout_with_the_whole_image(
    build: Build, checker: Path, tmp_path: Path
) -> None:
    archive = tmp_path / "image.tar"
    result, _ = _export(build, [OciOutput(str(archive), names=("example.com/app:v1",))])
    with tarfile.open(archive) as tar:
        tar.extractall(tmp_path / "layout", filter="tar")
    image = read_layout_image(tmp_path / "layout", "v1")
    assert image.manifest_digest == result.manifest_digest
    assert [layer["digest"] for layer in image.layers][:-1] == build.base_digests
    rootfs = flatten(layer_tree(image.blob(layer["digest"])) for layer in image.layers)
    assert "hello.txt" in rootfs and "usr/bin/echo" not in rootfs and "usr/bin/cat" in rootfs
    assert sorted(p for p in rootfs if p.startswith("opt/data/")) == ["opt/data/fresh.txt"]
    local = image.layers[-1]
    toc_digest = local["annotations"][mediatypes.TOC_DIGEST_ANNOTATION]
    report = run_go_checker(checker, image.blob(local["digest"]), toc_digest)
    assert report


def test_docker_tarball_and_load_run_in_dockerd(
    build: Build, dockerd: Dockerd, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DOCKER_HOST", dockerd.host)  # what --load must honour
    tarball = tmp_path / "docker.tar"
    result, _ = _export(
        build,
        [
            DockerOutput(str(tarball), ("lazybuild-test/exported:tar",)),
            DockerOutput(None, ("lazybuild-test/exported:load",)),
        ],
    )
    assert any("loaded into Docker: lazybuild-test/exported:load" in n for n in result.notes)
    dockerd.docker("load", "-i", str(tarball))
    for name in ("lazybuild-test/exported:tar", "lazybuild-test/exported:load"):
        image_id = dockerd.docker("image", "inspect", "-f", "{{.Id}}", name).stdout.strip()
        assert image_id == result.config_digest
    run = dockerd.docker("run", "--rm", "--network", "none", "lazybuild-test/exported:tar")
    assert run.stdout.encode() == GREETING
    name = "lazybuild-test/exported:load"
    fresh = dockerd.docker(
        "run", "--rm", "--network", "none", name, "/usr/bin/cat", "/opt/data/fresh.txt"
    )
    assert fresh.stdout == "fresh\n"
    hidden = dockerd.docker(
        "run", "--rm", "--network", "none", name, "/usr/bin/cat", "/opt/data/new.txt", check=False
    )
    assert hidden.returncode != 0
    gone = dockerd.docker("run", "--rm", "--network", "none", name, "/usr/bin/echo", check=False)
    assert gone.returncode != 0
