"""``export_image``: a build's layers and config, written to every output asked for.

Layers are turned into blobs only when an output needs an image (not for
``type=local`` alone), each local layer once (cached across builds, see
``layerblobs``); base image layers stay in their registry unless an output needs their
bytes, or the build optimizes them too (``baseblobs``). Outputs are written one after
the other, in the order given.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, Protocol

import trio

from lazybuild.errors import UsageError, one_error
from lazybuild.estargz.writer import WriterOptions
from lazybuild.exporter.baseblobs import rewritten_base_blobs
from lazybuild.exporter.content import BlobFiles, PreparedLayer, prepare_layers
from lazybuild.exporter.dockerload import docker_from_env, load_into_docker
from lazybuild.exporter.image import AssembledImage, assemble_image
from lazybuild.exporter.imagetar import ImageArchive, write_layout_dir
from lazybuild.exporter.layerblobs import (
    DEFAULT_COMPRESSION_CONCURRENCY,
    LayerBlob,
    local_layer_blobs,
)
from lazybuild.exporter.outputs import (
    STDOUT,
    DockerOutput,
    ImageOutput,
    LocalOutput,
    OciOutput,
    OutputSpec,
    TarOutput,
)
from lazybuild.exporter.registrypush import PushReport, WorkloadRecordAttachment, push_image
from lazybuild.exporter.rootfscopy import copy_rootfs
from lazybuild.exporter.rootfstar import write_rootfs_tar_to
from lazybuild.oci.platform import Platform, host_platform
from lazybuild.progress.lines import human_size, short_digest
from lazybuild.registry.client import RegistryClient
from lazybuild.state.processes import ProcessId
from lazybuild.worker.layers import Layer, LocalLayer, RemoteLayer
from lazybuild.worker.layerstore import LayerStore

if TYPE_CHECKING:
    from docker import DockerClient

__all__ = ["BuiltImage", "ExportResult", "export_image"]

# Base layers downloaded at once for a tarball.
_DOWNLOAD_CONCURRENCY = 4


class RendersOciConfig(Protocol):
    """A config value that writes itself as an OCI image config dict (callers that
    still hold a frontend's own config type)."""

    def to_oci_config(self) -> dict[str, Any]: ...


@dataclass(frozen=True)
class BuiltImage:
    """What a build produced: ``layers`` bottom first (the base image's first), the
    image config as data (an OCI image config: ``config``, ``history``, ``author``; or
    a value that renders itself as one), SOURCE_DATE_EPOCH, and the platform (None:
    this host's)."""

    layers: tuple[Layer, ...]
    config: Mapping[str, Any] | RendersOciConfig
    source_date_epoch: int | None = None
    platform: Platform | None = None
    # Local layer id -> the files to write first (a workload profile); others: none.
    prioritized: Mapping[str, Sequence[str]] = field(default_factory=dict)
    # The workload record behind ``prioritized``, pushed with the image.
    record: WorkloadRecordAttachment | None = None
    # None: base layers are kept byte for byte. Otherwise every base layer is rewritten
    # with the files listed under its blob digest first (``--optimize-base``).
    base_prioritized: Mapping[str, Sequence[str]] | None = None
    # --annotation: the image manifest's annotations.
    annotations: Mapping[str, str] = field(default_factory=dict)

    def oci_config(self) -> Mapping[str, Any]:
        if isinstance(self.config, Mapping):
            return self.config
        return self.config.to_oci_config()

    @property
    def base_layer_count(self) -> int:
        """The bottom layers that came with the base image."""
        count = 0
        for layer in self.layers:
            if not isinstance(layer, RemoteLayer) or layer.from_cache:
                break
            count += 1
        return count


@dataclass(frozen=True)
class ExportResult:
    """``image`` is None when no output needed one (``type=local`` only)."""

    image: AssembledImage | None
    names: tuple[str, ...]
    pushes: tuple[PushReport, ...]
    notes: tuple[str, ...]

    @property
    def manifest_digest(self) -> str | None:
        return self.image.manifest_descriptor.digest if self.image else None

    @property
    def config_digest(self) -> str | None:
        return self.image.config_descriptor.digest if self.image else None

    def metadata(self) -> dict[str, Any]:
        """What ``--metadata-file`` holds, with buildx's keys."""
        if self.image is None:
            return {}
        metadata: dict[str, Any] = {
            "containerimage.config.digest": self.image.config_descriptor.digest,
            "containerimage.descriptor": self.image.manifest_descriptor.to_json(),
            "containerimage.digest": self.image.manifest_descriptor.digest,
        }
        if self.names:
            metadata["image.name"] = ",".join(self.names)
        return metadata


async def export_image(
    image: BuiltImage,
    outputs: Sequence[OutputSpec],
    *,
    store: LayerStore,
    registry: RegistryClient,
    rootfs: Callable[[], AbstractAsyncContextManager[Path]],
    writer_options: WriterOptions,
    progress: Callable[[str], None],
    docker_client: Callable[[], DockerClient] = docker_from_env,
    compression_concurrency: int = DEFAULT_COMPRESSION_CONCURRENCY,
    assemble: bool = False,
) -> ExportResult:
    """Write ``image`` to each of ``outputs``. ``rootfs`` mounts the final root
    filesystem read-only (for ``type=local``); ``docker_client`` reaches the engine for
    ``--load``; ``assemble`` makes the image (its id) even when no output needs it."""
    # Named by this process like a staging area: another build starting meanwhile
    # removes only areas whose owner is gone.
    scratch = Path(
        tempfile.mkdtemp(prefix=f"{ProcessId.current().tag}-export-", dir=store.staging_dir)
    )
    try:
        exporter = _Exporter(
            image,
            store=store,
            registry=registry,
            writer_options=writer_options,
            progress=progress,
            scratch=scratch,
        )
        if assemble or any(not isinstance(spec, LocalOutput | TarOutput) for spec in outputs):
            await exporter.assemble(compression_concurrency)
        for spec in outputs:
            if isinstance(spec, ImageOutput):
                await exporter.push(spec)
            elif isinstance(spec, OciOutput):
                await exporter.oci(spec)
            elif isinstance(spec, DockerOutput):
                await exporter.docker(spec, docker_client)
            elif isinstance(spec, TarOutput):
                await exporter.rootfs_tar(spec, rootfs)
            else:
                await exporter.local(spec, rootfs)
        return exporter.result()
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


class _Exporter:
    def __init__(
        self,
        image: BuiltImage,
        *,
        store: LayerStore,
        registry: RegistryClient,
        writer_options: WriterOptions,
        progress: Callable[[str], None],
        scratch: Path,
    ) -> None:
        self.image = image
        self.store = store
        self.registry = registry
        # A prioritized path is in at most one of the layers, so the others lack it.
        self.writer_options = replace(writer_options, allow_missing_prioritized=True)
        self.progress = progress
        self.scratch = scratch
        self.assembled: AssembledImage | None = None
        self.layers: list[PreparedLayer] = []
        self.blob_files: BlobFiles | None = None
        self.names: list[str] = []
        self.pushes: list[PushReport] = []
        self.notes: list[str] = []

    async def assemble(self, concurrency: int) -> None:
        local = [layer for layer in self.image.layers if isinstance(layer, LocalLayer)]

        def done(layer: LocalLayer, blob: LayerBlob) -> None:
            self.progress(
                f"layer {layer.id[:12]}: eStargz {short_digest(blob.descriptor.digest)} "
                f"({human_size(blob.descriptor.size)})"
            )

        blobs = await local_layer_blobs(
            local,
            self.store,
            self.writer_options,
            source_date_epoch=self.image.source_date_epoch,
            concurrency=concurrency,
            on_done=done,
            prioritized=self.image.prioritized,
        )
        base_blobs: dict[str, LayerBlob] = {}
        if self.image.base_prioritized is not None:
            base_blobs = await rewritten_base_blobs(
                [layer for layer in self.image.layers if isinstance(layer, RemoteLayer)],
                self.image.base_prioritized,
                store=self.store,
                registry=self.registry,
                options=self.writer_options,
                progress=self.progress,
                concurrency=concurrency,
            )
        self.layers = prepare_layers(self.image.layers, blobs, base_blobs)
        self.assembled = assemble_image(
            self.image.oci_config(),
            [layer.exported for layer in self.layers],
            base_layer_count=self.image.base_layer_count,
            platform=self.image.platform or host_platform(),
            source_date_epoch=self.image.source_date_epoch,
            now=_made_at(self.image.layers),
            annotations=self.image.annotations,
        )
        self.blob_files = BlobFiles(self.registry, self.layers, self.scratch, self.progress)
        self.progress(
            f"image {short_digest(self.assembled.manifest_descriptor.digest)} "
            f"(config {short_digest(self.assembled.config_descriptor.digest)}, "
            f"{len(self.layers)} layers)"
        )

    def _image(self) -> tuple[AssembledImage, BlobFiles]:
        assert self.assembled is not None and self.blob_files is not None
        return self.assembled, self.blob_files

    def _add_names(self, names: Sequence[str]) -> None:
        self.names.extend(name for name in names if name not in self.names)

    async def push(self, spec: ImageOutput) -> None:
        image, blob_files = self._image()
        reports = await push_image(
            image,
            self.layers,
            spec.names,
            registry=self.registry,
            blobs=blob_files,
            progress=self.progress,
            record=self.image.record,
        )
        self.pushes.extend(reports)
        self._add_names(spec.names)
        self.notes.extend(f"pushed {r.name}@{r.manifest_digest}" for r in reports)

    async def oci(self, spec: OciOutput) -> None:
        archive = await self._archive(spec.names, docker_manifest=False)
        if spec.tar:
            await self._write_tar(archive, spec.dest)
        else:
            if spec.dest == STDOUT:
                raise UsageError("type=oci,tar=false needs dest=DIR, not stdout")
            await trio.to_thread.run_sync(write_layout_dir, archive, Path(spec.dest))
        self._add_names(spec.names)
        self.notes.append(f"wrote OCI image layout to {spec.dest}")

    async def docker(self, spec: DockerOutput, client: Callable[[], DockerClient]) -> None:
        archive = await self._archive(spec.names, docker_manifest=True)
        if spec.dest is not None:
            await self._write_tar(archive, spec.dest)
            self.notes.append(f"wrote docker image tarball to {spec.dest}")
        else:
            self.progress("loading the image into Docker")
            loaded = await load_into_docker(archive.write_tar, client)
            self.notes.append(f"loaded into Docker: {', '.join(loaded) or 'nothing'}")
        self._add_names(spec.names)

    async def local(
        self, spec: LocalOutput, rootfs: Callable[[], AbstractAsyncContextManager[Path]]
    ) -> None:
        self.progress(f"copying the root filesystem to {spec.dest}")
        async with rootfs() as root:
            stats = await trio.to_thread.run_sync(copy_rootfs, root, spec.dest)
        note = f"copied {stats.entries} entries ({human_size(stats.bytes)}) to {spec.dest}"
        if stats.unset_owners or stats.unset_xattrs:
            note += (
                f"; {stats.unset_owners} owners and {stats.unset_xattrs} xattrs could not be "
                "set (not root?)"
            )
        self.progress(note)
        self.notes.append(note)

    async def rootfs_tar(
        self, spec: TarOutput, rootfs: Callable[[], AbstractAsyncContextManager[Path]]
    ) -> None:
        shown = "standard output" if spec.dest == STDOUT else spec.dest
        self.progress(f"writing the root filesystem as a tar to {shown}")
        async with rootfs() as root:
            stats = await trio.to_thread.run_sync(write_rootfs_tar_to, root, spec.dest)
        note = f"wrote {stats.entries} entries ({human_size(stats.bytes)}) as a tar to {shown}"
        self.progress(note)
        self.notes.append(note)

    async def _archive(self, names: Sequence[str], *, docker_manifest: bool) -> ImageArchive:
        image, blob_files = self._image()
        paths: dict[str, Path] = {}
        limiter = trio.CapacityLimiter(_DOWNLOAD_CONCURRENCY)

        async def fetch(digest: str) -> None:
            async with limiter:
                paths[digest] = await blob_files.path(digest)

        with one_error():  # one failed layer is the error, not a group of it
            async with trio.open_nursery() as nursery:
                for digest in {layer.descriptor.digest for layer in image.layers}:
                    nursery.start_soon(fetch, digest)
        return ImageArchive(
            image, paths, tuple(names), docker_manifest, self.image.source_date_epoch or 0
        )

    async def _write_tar(self, archive: ImageArchive, dest: str) -> None:
        if dest == STDOUT:
            stdout = sys.stdout.buffer
            if stdout.isatty():
                raise UsageError(
                    "refusing to write an image tarball to a terminal; redirect stdout"
                )
            await trio.to_thread.run_sync(_write_stream, archive, stdout)
            return
        await trio.to_thread.run_sync(_write_file, archive, Path(dest))

    def result(self) -> ExportResult:
        return ExportResult(
            self.assembled, tuple(self.names), tuple(self.pushes), tuple(self.notes)
        )


def _write_stream(archive: ImageArchive, out: BinaryIO) -> None:
    archive.write_tar(out)
    out.flush()


def _write_file(archive: ImageArchive, dest: Path) -> None:
    """The tarball at ``dest``, appearing only once complete."""
    if dest.is_dir():
        raise UsageError(f"output destination {dest} is a directory, not a file")
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".partial")
    staged = Path(name)
    try:
        with os.fdopen(fd, "wb") as out:
            archive.write_tar(out)
        staged.chmod(0o644)
        staged.replace(dest)
    except BaseException:
        staged.unlink(missing_ok=True)
        raise


def _made_at(layers: Sequence[Layer]) -> datetime | None:
    """When the newest layer this machine made was committed (its directory's time): the
    image's ``created`` and its new history entries' time, so a rebuild whose steps all
    come from the cache writes the same image, as BuildKit dates an image by its
    layers. None (now) when no layer was made here."""
    times = []
    for layer in layers:
        if isinstance(layer, LocalLayer):
            try:
                times.append(os.stat(layer.path).st_mtime_ns)
            except OSError:
                continue
    if not times:
        return None
    return datetime.fromtimestamp(max(times) / 1e9, UTC)
