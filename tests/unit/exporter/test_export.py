"""export_image end to end against a fake registry: every output from one build result."""

from __future__ import annotations

import contextlib
import json
import tarfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, cast

import pytest
import trio

from lazybuild.estargz.writer import WriterOptions
from lazybuild.exporter import (
    BuiltImage,
    DockerOutput,
    ExportResult,
    ImageOutput,
    LocalOutput,
    OciOutput,
    OutputSpec,
    export_image,
)
from lazybuild.frontend.dockerfile.imageconfig import HistoryEntry, ImageConfigState
from lazybuild.oci.layout import OciLayout
from lazybuild.registry.client import RegistryClient
from lazybuild.worker.layers import LocalLayer, RemoteLayer
from lazybuild.worker.layerstore import LayerStore
from tests.unit.exporter.helpers import FakeRegistry, descriptor_of, gzip_layer

SOURCE_REPO = "r.example/base"
SOURCE = f"{SOURCE_REPO}@sha256:" + "a" * 64


@pytest.fixture
def store(tmp_path: Path) -> LayerStore:
    return LayerStore(tmp_path / "state")


def _built(store: LayerStore, registry: FakeRegistry) -> BuiltImage:
    base, base_diff = gzip_layer({"etc/os-release": b"ID=test\n"})
    registry.put(SOURCE_REPO, base)
    upper = store.layers_dir / "step1"
    if not upper.exists():
        (upper / "app").mkdir(parents=True)
        (upper / "app" / "hello").write_text("hello\n")
    config = ImageConfigState(
        cmd=("/app/hello",),
        history=(HistoryEntry("base layer"), HistoryEntry("COPY hello /app/")),
    )
    return BuiltImage(
        layers=(
            RemoteLayer(descriptor_of(base), SOURCE, base_diff),
            LocalLayer("step1", upper),
        ),
        config=config,
        source_date_epoch=1_700_000_000,
    )


def _export(
    store: LayerStore,
    registry: FakeRegistry,
    outputs: list[OutputSpec],
    rootfs_dir: Path | None = None,
) -> tuple[ExportResult, list[str]]:
    lines: list[str] = []

    @contextlib.asynccontextmanager
    async def rootfs() -> AsyncIterator[Path]:
        assert rootfs_dir is not None
        yield rootfs_dir

    async def main() -> ExportResult:
        return await export_image(
            _built(store, registry),
            outputs,
            store=store,
            registry=cast(RegistryClient, registry),
            rootfs=rootfs,
            writer_options=WriterOptions(chunk_size=1 << 16, workers=1),
            progress=lines.append,
        )

    return trio.run(main), lines


def test_every_image_output_gets_the_same_image(store: LayerStore, tmp_path: Path) -> None:
    registry = FakeRegistry()
    outputs: list[OutputSpec] = [
        ImageOutput(("r.example/app:1",), push=True),
        OciOutput(str(tmp_path / "layout"), tar=False, names=("r.example/app:1",)),
        DockerOutput(str(tmp_path / "image.tar"), ("app:1",)),
    ]
    result, lines = _export(store, registry, outputs)
    assert result.image is not None
    digest = result.manifest_digest
    assert registry.manifests["r.example/app:1"] == result.image.manifest_bytes
    assert OciLayout.open(tmp_path / "layout").resolve("1").digest == digest
    with tarfile.open(tmp_path / "image.tar") as tar:
        manifest_file = tar.extractfile("manifest.json")
        assert manifest_file is not None
        (entry,) = json.load(manifest_file)
    assert entry["Config"].endswith(str(result.config_digest).split(":")[1])
    assert result.metadata() == {
        "containerimage.config.digest": result.config_digest,
        "containerimage.descriptor": result.image.manifest_descriptor.to_json(),
        "containerimage.digest": digest,
        "image.name": "r.example/app:1,app:1",
    }
    config = result.image.config
    assert config["created"] == "2023-11-14T22:13:20Z"
    assert [h["created_by"] for h in config["history"]] == ["base layer", "COPY hello /app/"]
    # The base layer was mounted for the push and downloaded once for both tarballs.
    downloads = [c for c in registry.calls if c[0] == "download"]
    assert len(downloads) == 1
    assert any("downloading base layer" in line for line in lines)
    assert list(store.staging_dir.iterdir()) == []  # scratch removed


def test_a_second_export_reuses_the_cached_blob(store: LayerStore, tmp_path: Path) -> None:
    registry = FakeRegistry()
    first, _ = _export(store, registry, [OciOutput(str(tmp_path / "a.tar"))])
    second, _ = _export(store, registry, [OciOutput(str(tmp_path / "b.tar"))])
    assert first.manifest_digest == second.manifest_digest
    assert (tmp_path / "a.tar").read_bytes() == (tmp_path / "b.tar").read_bytes()
    assert len(list(store.blobs_dir.glob("step1-*.esgz"))) == 1


def test_local_output_alone_compresses_nothing(store: LayerStore, tmp_path: Path) -> None:
    rootfs_dir = tmp_path / "merged"
    (rootfs_dir / "app").mkdir(parents=True)
    (rootfs_dir / "app" / "hello").write_text("hello\n")
    result, _ = _export(store, FakeRegistry(), [LocalOutput(tmp_path / "out")], rootfs_dir)
    assert result.image is None and result.metadata() == {}
    assert (tmp_path / "out" / "app" / "hello").read_text() == "hello\n"
    assert list(store.blobs_dir.iterdir()) == []


def test_a_failed_tarball_leaves_no_file(
    store: LayerStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from lazybuild.exporter import imagetar

    def broken(*args: Any, **kwargs: Any) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(imagetar.ImageArchive, "write_tar", broken)
    with pytest.raises(OSError, match="disk full"):
        _export(store, FakeRegistry(), [OciOutput(str(tmp_path / "o.tar"))])
    assert list(tmp_path.glob("*o.tar*")) == []


def test_a_build_starting_meanwhile_leaves_an_export_running(
    store: LayerStore, tmp_path: Path
) -> None:
    """Another build's start cleans the staging areas of builds that are gone; this
    export's scratch directory is named by its (live) process, so it stays."""
    registry = FakeRegistry()
    outputs: list[OutputSpec] = [DockerOutput(str(tmp_path / "image.tar"), ("app:1",))]
    cleaned: list[int] = []

    def progress(line: str) -> None:
        store.clean_staging()  # as a build starting in this state dir does
        cleaned.append(len(list(store.staging_dir.iterdir())))

    async def main() -> ExportResult:
        return await export_image(
            _built(store, registry),
            outputs,
            store=store,
            registry=cast(RegistryClient, registry),
            rootfs=_no_rootfs,
            writer_options=WriterOptions(chunk_size=1 << 16, workers=1),
            progress=progress,
        )

    assert trio.run(main).image is not None
    assert cleaned and all(count >= 1 for count in cleaned), cleaned  # the scratch stayed
    assert (tmp_path / "image.tar").is_file()


@contextlib.asynccontextmanager
async def _no_rootfs() -> AsyncIterator[Path]:
    raise AssertionError("no local output here")
    yield Path()
