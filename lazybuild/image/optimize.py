"""`lazybuild optimize SRC DST`: an image rewritten so that its workload starts fast.

Like ``ctr-remote image optimize``: the image's workload runs (``profile.workload``)
over a lazy mount of SRC (eStargz layers are served on demand, others are downloaded
whole; an ``oci:DIR`` source is unpacked locally), and every file it opens or reads is
recorded in order. Each layer is then written as eStargz with the recorded files it
serves first, in access order, and ``.prefetch.landmark`` after them, so a runtime
fetches all of them with one request per layer; a layer the workload read nothing
from gets ``.no.prefetch.landmark``. Base layers are rewritten too. An eStargz layer
whose layout already is exactly that is kept byte for byte.

Reordering changes a layer's uncompressed tar, so rewritten layers get new diff_ids;
the config's ``rootfs.diff_ids`` follow (history is untouched). The record goes to
``--record-out`` and, as a small artifact in an OCI index next to the image
(``profile.artifact``), with the image. ``--record-in`` takes a record (ours or
ctr-remote's) instead of running the workload. Only the host's platform is optimized
(the workload has to run here), so the result has one image manifest.

A workload that fails to start, exits non-zero, crashes or hangs does not fail the
command: its outcome is reported and the image is written with what it read.

The workload runs through ``sourceworkload`` (and ``profile.recording``, as a build's
profiling does); layers and documents are written through ``layerrewrite`` and
``manifestrewrite``, as ``convert`` writes them.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Any

import trio

from lazybuild.errors import FormatError, UsageError
from lazybuild.estargz.index import clean_name
from lazybuild.estargz.layerformat import LayerFormat
from lazybuild.estargz.toc import BIG_FILE_CHUNK_SIZE, PREFETCH_LANDMARK, decode_toc_json
from lazybuild.estargz.writer import DEFAULT_CHUNK_SIZE
from lazybuild.image.layerprobe import LayerProbe, probe_layer
from lazybuild.image.layerrewrite import LayerRewriter, RewrittenLayer, each, writer_options
from lazybuild.image.manifestrewrite import fetch_child, put_image, source_config
from lazybuild.image.sourceworkload import record_source_workload
from lazybuild.image.store import (
    ImageSource,
    ImageTarget,
    LayoutSource,
    open_source,
    open_target,
)
from lazybuild.lazyfs.unpack import (
    is_lazy_layer,
    unpack_verified_tar,
    unpacked_root,
)
from lazybuild.oci.descriptor import Descriptor
from lazybuild.oci.manifest import Index, Manifest
from lazybuild.oci.platform import Platform, host_platform
from lazybuild.profile.artifact import (
    RECORD_ANNOTATION,
    index_with_record,
    record_artifact,
    record_descriptor,
)
from lazybuild.profile.layers import (
    LayerAssignment,
    TarLayerContents,
    left_out_note,
    plan_layers,
)
from lazybuild.profile.record import RecordEntry, encode_record, write_record
from lazybuild.profile.recording import (
    RecordedReads,
    WorkloadOptions,
    reads_from_record,
)
from lazybuild.profile.workload import OutputSink, WorkloadRecord
from lazybuild.progress.lines import Progress, human_size, short_digest
from lazybuild.registry.options import RegistryOptions

__all__ = [
    "OptimizeRequest",
    "OptimizeResult",
    "OptimizedLayer",
    "WorkloadOptions",
    "optimize_image",
]


@dataclass(frozen=True)
class OptimizeRequest:
    source: str
    destination: str
    workload: WorkloadOptions = field(default_factory=WorkloadOptions)
    record_in: Path | None = None
    record_out: Path | None = None
    attach_record: bool = True
    chunk_size: int = DEFAULT_CHUNK_SIZE
    compression_level: int | None = None
    tmpdir: Path | None = None


@dataclass(frozen=True)
class OptimizedLayer(RewrittenLayer):
    prioritized: tuple[str, ...]  # the recorded files it serves, in access order
    rewritten: bool  # False: an eStargz layer already laid out this way, kept


@dataclass(frozen=True)
class OptimizeResult:
    root: Descriptor  # what DST now names: the index, or the manifest alone
    manifest: Descriptor
    source_manifest: str
    record: tuple[RecordEntry, ...]
    workload: WorkloadRecord | None  # None with --record-in
    layers: tuple[OptimizedLayer, ...]
    unassigned: tuple[str, ...]  # recorded files no layer has (the workload wrote them)
    record_artifact: Descriptor | None


@dataclass
class _Layer:
    position: int
    descriptor: Descriptor
    diff_id: str
    probe: LayerProbe | None = None
    tar: Path | None = None
    contents: TarLayerContents | None = None

    @property
    def is_estargz(self) -> bool:
        return self.probe is not None and self.probe.format is LayerFormat.ESTARGZ


@dataclass(frozen=True)
class _SourceImage:
    descriptor: Descriptor
    manifest: Manifest
    config: dict[str, Any]
    diff_ids: list[str]
    platform: Platform
    where: str


async def optimize_image(
    request: OptimizeRequest,
    *,
    state_dir: Path,
    registry: RegistryOptions,
    progress: Progress,
    output: OutputSink | None = None,
) -> OptimizeResult:
    if request.workload.timeout <= 0:
        raise UsageError("--workload-timeout must be positive")
    async with registry.client() as client:
        source = open_source(request.source, client)
        target = open_target(request.destination, client, source)
        progress.line(f"optimizing {source.description} -> {target.description}")
        with tempfile.TemporaryDirectory(prefix="lazybuild-optimize-", dir=request.tmpdir) as tmp:
            job = _Optimizer(request, LayerRewriter(source, target, Path(tmp)), progress)
            return await job.run(state_dir, registry, output)


class _Optimizer:
    def __init__(self, request: OptimizeRequest, layers: LayerRewriter, progress: Progress) -> None:
        self.request = request
        self.layers = layers
        self.source: ImageSource = layers.source
        self.target: ImageTarget = layers.target
        self.progress = progress

    async def run(
        self, state_dir: Path, registry: RegistryOptions, output: OutputSink | None
    ) -> OptimizeResult:
        image = await self._resolve()
        layers = [
            _Layer(i, descriptor, diff_id)
            for i, (descriptor, diff_id) in enumerate(
                zip(image.manifest.layers, image.diff_ids, strict=True)
            )
        ]
        await each(layers, self._probe)
        local = isinstance(self.source, LayoutSource)
        # Layers that are not eStargz are rewritten from their tar in any case; a layout
        # is unpacked from its tars to run the workload.
        await each([la for la in layers if local or not la.is_estargz], self._prepare_tar)
        if self.request.record_in is not None:
            reads = self._reads_from_record(self.request.record_in, image)
        else:
            if not local:
                # The lazy mount that runs the workload unpacks the layers it cannot serve
                # lazily: from the tars at hand, not by downloading those blobs again.
                unpacked = [la for la in layers if la.tar and not is_lazy_layer(la.descriptor)]
                await each(unpacked, partial(self._unpack_for_mount, state_dir))
            reads = await record_source_workload(
                self.source,
                image.descriptor.digest,
                image.config,
                [(la.tar, self._where(la)) for la in layers],
                self.request.workload,
                state_dir=state_dir,
                registry=registry,
                progress=self.progress,
                output=output,
            )
        workload = reads.workload
        for layer in layers:
            layer.contents = self._contents(layer)
        contents = [la.contents for la in layers if la.contents]
        plan = plan_layers(reads.files, contents)
        assignment = plan.assignment
        self._report_assignment(assignment, len(reads.files))
        if plan.left_out:
            self.progress.line(left_out_note(plan.left_out))
        entries = tuple(assignment.entries(image.descriptor.digest, reads.read_ranges))
        record = encode_record(entries)
        if self.request.record_out is not None:
            await trio.to_thread.run_sync(write_record, self.request.record_out, entries)
            self.progress.line(f"record: {len(entries)} file(s) -> {self.request.record_out}")
        outcomes: list[OptimizedLayer | None] = [None] * len(layers)

        too_big = set(plan.left_out)

        async def optimize_one(layer: _Layer) -> None:
            read_in_places = [p for p in assignment.per_layer[layer.position] if p in too_big]
            outcomes[layer.position] = await self._optimize_layer(
                layer, plan.first[layer.position], read_in_places, len(layers)
            )

        await each(layers, optimize_one)
        done = [o for o in outcomes if o is not None]
        root, manifest, artifact = await self._write_image(image, done, record, workload)
        return OptimizeResult(
            root=root,
            manifest=manifest,
            source_manifest=image.descriptor.digest,
            record=entries,
            workload=workload,
            layers=tuple(done),
            unassigned=assignment.unassigned,
            record_artifact=artifact,
        )

    # -- the source image --------------------------------------------------------

    async def _resolve(self) -> _SourceImage:
        root = await self.source.root()
        descriptor, document = root.descriptor, root.document
        platform: Platform | None = None
        if isinstance(document, Index):
            chosen = document.select(host_platform(), self.source.description)
            document = await fetch_child(self.source, chosen)
            if not isinstance(document, Manifest):
                where = f"{self.source.description} ({short_digest(chosen.digest)})"
                raise FormatError(f"{where}: index entry {chosen.digest} is not an image")
            descriptor, platform = chosen, chosen.platform
        where = f"{self.source.description} ({short_digest(descriptor.digest)})"
        config, diff_ids = await source_config(self.source, document, where)
        if platform is None:
            platform = Platform(
                str(config.get("os") or "linux"),
                str(config.get("architecture") or host_platform().architecture),
                str(config.get("variant") or ""),
            )
        self.progress.line(
            f"{where}: {len(document.layers)} layer(s), "
            f"{human_size(sum(layer.size for layer in document.layers))}, {platform}"
        )
        return _SourceImage(descriptor, document, config, diff_ids, platform, where)

    async def _probe(self, layer: _Layer) -> None:
        layer.probe = await probe_layer(self.source, layer.descriptor, self._where(layer))

    async def _prepare_tar(self, layer: _Layer) -> None:
        """Download the blob (verified) and keep its uncompressed tar."""
        if layer.tar is None:
            layer.tar = await self.layers.download_tar(layer.descriptor, str(layer.position))

    async def _unpack_for_mount(self, state_dir: Path, layer: _Layer) -> None:
        assert layer.tar is not None
        async with self.layers.transfers:
            await unpack_verified_tar(layer.tar, layer.descriptor, unpacked_root(state_dir))

    def _contents(self, layer: _Layer) -> TarLayerContents:
        if layer.probe is not None and layer.probe.opened is not None:
            return TarLayerContents.from_toc(decode_toc_json(layer.probe.opened.toc_json))
        assert layer.tar is not None
        with layer.tar.open("rb") as stream:
            return TarLayerContents.from_tar(stream, self._where(layer))

    def _where(self, layer: _Layer) -> str:
        return f"layer {layer.position + 1} ({short_digest(layer.descriptor.digest)})"

    # -- the workload -------------------------------------------------------------

    def _reads_from_record(self, path: Path, image: _SourceImage) -> RecordedReads:
        reads = reads_from_record(path)
        others = reads.manifests - {image.descriptor.digest}
        note = ""
        if others:
            note = f" (made on {', '.join(sorted(short_digest(d) for d in others))}: paths reused)"
        self.progress.line(f"record from {path}: {len(reads.files)} file(s){note}")
        return reads

    def _report_assignment(self, assignment: LayerAssignment, recorded: int) -> None:
        if assignment.unassigned:
            names = ", ".join(assignment.unassigned[:3])
            more = ", ..." if len(assignment.unassigned) > 3 else ""
            self.progress.line(
                f"{len(assignment.unassigned)} of {recorded} recorded file(s) are in no layer "
                f"(written by the workload, or deleted by an upper layer): {names}{more}"
            )

    # -- the layers ---------------------------------------------------------------

    async def _optimize_layer(
        self, layer: _Layer, wanted: Sequence[str], read_in_places: Sequence[str], count: int
    ) -> OptimizedLayer:
        """``layer`` with ``wanted`` first; ``read_in_places`` are its files too big to
        prefetch whole that the workload read, which the rewrite cuts finer."""
        started = time.monotonic()
        where = f"layer {layer.position + 1}/{count} ({short_digest(layer.descriptor.digest)})"
        plan = f"{len(wanted)} prioritized file(s)" if wanted else "nothing read: no prefetch"
        if layer.is_estargz and _laid_out_as(layer, wanted, read_in_places):
            result, transfer = await self._keep(layer)
            self.progress.line(f"{where}: eStargz already laid out so ({plan}), kept")
            return OptimizedLayer(
                layer.descriptor,
                result,
                layer.diff_id,
                transfer,
                prioritized=tuple(wanted),
                rewritten=False,
            )
        await self._prepare_tar(layer)
        tar = layer.tar
        assert tar is not None
        chunk_size = self.request.chunk_size
        options = replace(
            writer_options(chunk_size, self.request.compression_level),
            prioritized_files=list(wanted) or None,
            allow_missing_prioritized=True,
            big_file_chunk_size=min(BIG_FILE_CHUNK_SIZE, chunk_size),
        )
        written = await self.layers.write(lambda: tar.open("rb"), options, str(layer.position))
        tar.unlink(missing_ok=True)
        if written.missing_prioritized:  # cannot happen: paths come from the layer's entries
            self.progress.line(f"{where}: {len(written.missing_prioritized)} file(s) not found")
        result, transfer = await self.layers.upload(written)
        assert layer.probe is not None
        self.progress.line(
            f"{where}: {layer.probe.format.value} {human_size(layer.descriptor.size)} -> eStargz "
            f"{short_digest(written.digest)} {human_size(written.size)}, {plan} "
            f"in {time.monotonic() - started:.1f}s"
        )
        return OptimizedLayer(
            layer.descriptor,
            result,
            written.diff_id,
            transfer,
            prioritized=tuple(wanted),
            rewritten=True,
        )

    async def _keep(self, layer: _Layer) -> tuple[Descriptor, str]:
        assert layer.probe is not None

        async def tar_size() -> int:
            await self._prepare_tar(layer)
            assert layer.tar is not None
            return layer.tar.stat().st_size

        return await self.layers.keep(layer.probe, tar_size, str(layer.position))

    # -- the image ------------------------------------------------------------------

    async def _write_image(
        self,
        image: _SourceImage,
        layers: list[OptimizedLayer],
        record: bytes,
        workload: WorkloadRecord | None,
    ) -> tuple[Descriptor, Descriptor, Descriptor | None]:
        attach = self.request.attach_record and bool(record)
        annotations = dict(image.manifest.annotations)
        annotations.pop(RECORD_ANNOTATION, None)
        if attach:
            annotations[RECORD_ANNOTATION] = record_descriptor(record).digest
        manifest_descriptor = await put_image(
            self.target,
            image.config,
            [layer.result for layer in layers],
            [layer.diff_id for layer in layers],
            annotations=annotations,
            # The source's own artifact fields would make ours an artifact about it.
            extra={
                k: v
                for k, v in image.manifest.extra.items()
                if k not in ("subject", "artifactType")
            },
            root=not attach,
        )
        if not attach:
            self.progress.line(f"image manifest {short_digest(manifest_descriptor.digest)}")
            return manifest_descriptor, manifest_descriptor, None
        artifact = record_artifact(
            record,
            manifest_descriptor,
            command=workload.args if workload else (),
            outcome=workload.outcome.to_json() if workload else None,
        )
        for descriptor, data in artifact.blobs:
            await self.target.put_blob(descriptor, data)
        await self.target.put_manifest(artifact.manifest, artifact.manifest_bytes, root=False)
        index_descriptor, index_bytes = index_with_record(
            manifest_descriptor, image.platform, artifact
        )
        await self.target.put_manifest(index_descriptor, index_bytes, root=True)
        self.progress.line(
            f"image manifest {short_digest(manifest_descriptor.digest)} and its workload record "
            f"{short_digest(artifact.manifest.digest)} in the index "
            f"{short_digest(index_descriptor.digest)}"
        )
        return index_descriptor, manifest_descriptor, artifact.manifest


def _laid_out_as(layer: _Layer, wanted: Sequence[str], read_in_places: Sequence[str]) -> bool:
    """Whether the eStargz layer already has exactly ``wanted`` first, then the landmark,
    and the big files of ``read_in_places`` in chunks no larger than a rewrite's."""
    assert layer.probe is not None and layer.probe.opened is not None
    index = layer.probe.opened.index
    for path in read_in_places:
        node = index.lookup(path)
        if node is not None and any(c.size > BIG_FILE_CHUNK_SIZE for c in node.chunks):
            return False
    if not wanted:
        return index.no_prefetch
    if index.prefetch_landmark_offset is None:
        return False
    first: list[str] = []
    for entry in decode_toc_json(layer.probe.opened.toc_json).entries:
        name = clean_name(entry.name)
        if name == PREFETCH_LANDMARK:
            break
        if entry.type not in ("dir", "chunk"):
            first.append(name)
    return first == list(wanted)
