"""Convert an image's layers to eStargz, keeping its config and history right.

Per platform manifest: every layer is probed; eStargz layers are kept byte for byte,
all others are downloaded (verified), decompressed and written as eStargz. The config's
``rootfs.diff_ids`` follow the new layers, each new layer descriptor carries the
``toc.digest`` and uncompressed-size annotations, and OCI media types are used
throughout (Docker media types drop those annotations in some tools). The layer and
document work is ``layerrewrite``'s and ``manifestrewrite``'s, shared with ``optimize``.
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import BinaryIO

import trio

from lazybuild.errors import FormatError
from lazybuild.estargz.layerformat import LayerFormat, decompressed_stream
from lazybuild.image.layerprobe import probe_layer
from lazybuild.image.layerrewrite import LayerRewriter, RewrittenLayer, each, writer_options
from lazybuild.image.manifestrewrite import fetch_child, put_document, put_image, source_config
from lazybuild.image.store import ImageSource, ImageTarget
from lazybuild.oci import mediatypes
from lazybuild.oci.descriptor import Descriptor
from lazybuild.oci.manifest import Index, Manifest
from lazybuild.oci.platform import Platform
from lazybuild.progress.lines import Progress, human_size, short_digest


@dataclass(frozen=True)
class ConvertOptions:
    chunk_size: int = 4 << 20
    compression_level: int | None = None
    platform: Platform | None = None  # None converts every platform of an index
    workers: int = field(default_factory=lambda: os.cpu_count() or 1)
    tmpdir: Path | None = None


@dataclass(frozen=True)
class LayerOutcome(RewrittenLayer):
    source_format: LayerFormat
    converted: bool  # False: eStargz already, kept
    seconds: float


@dataclass(frozen=True)
class ConvertResult:
    root: Descriptor
    layers: tuple[LayerOutcome, ...]


async def convert_image(
    source: ImageSource,
    target: ImageTarget,
    options: ConvertOptions,
    progress: Progress,
) -> ConvertResult:
    root = await source.root()
    with tempfile.TemporaryDirectory(prefix="lazybuild-convert-", dir=options.tmpdir) as tmp:
        converter = _Converter(LayerRewriter(source, target, Path(tmp)), options, progress)
        if isinstance(root.document, Manifest):
            descriptor = await converter.convert_manifest(
                root.descriptor, root.document, is_root=True
            )
        else:
            descriptor = await converter.convert_index(root.document)
    return ConvertResult(descriptor, tuple(converter.outcomes))


class _Converter:
    def __init__(self, layers: LayerRewriter, options: ConvertOptions, progress: Progress) -> None:
        self.layers = layers
        self.source = layers.source
        self.options = options
        self.progress = progress
        self.outcomes: list[LayerOutcome] = []
        # A layer listed twice (in one manifest or across platforms) is converted once.
        self._layer_locks: dict[str, trio.Lock] = {}
        self._converted_layers: dict[str, LayerOutcome] = {}

    async def convert_index(self, index: Index) -> Descriptor:
        entries: list[Descriptor] = []
        for entry in index.manifests:
            if not mediatypes.is_manifest(entry.media_type) or entry.platform is None:
                self.progress.line(
                    f"skipping index entry {short_digest(entry.digest)}: not an image"
                )
                continue
            if entry.platform.os == "unknown":
                # Attestation manifests describe the original image; they would lie about ours.
                self.progress.line(f"dropping attestation manifest {short_digest(entry.digest)}")
                continue
            if self.options.platform is not None and not self.options.platform.matches(
                entry.platform
            ):
                continue
            manifest = await fetch_child(self.source, entry)
            if not isinstance(manifest, Manifest):
                raise FormatError(
                    f"{self.source.description}: index entry {entry.digest} is not an image "
                    "manifest"
                )
            self.progress.line(f"platform {entry.platform}")
            converted = await self.convert_manifest(entry, manifest, is_root=False)
            entries.append(
                Descriptor(
                    converted.media_type,
                    converted.digest,
                    converted.size,
                    entry.annotations,
                    entry.platform,
                )
            )
        if not entries:
            raise FormatError(f"{self.source.description}: no image manifest to convert")
        new_index = Index(mediatypes.OCI_INDEX, tuple(entries), index.annotations, index.extra)
        return await put_document(
            self.layers.target, mediatypes.OCI_INDEX, new_index.encode(), root=True
        )

    async def convert_manifest(
        self, descriptor: Descriptor, manifest: Manifest, *, is_root: bool
    ) -> Descriptor:
        where = f"{self.source.description} ({short_digest(descriptor.digest)})"
        config, diff_ids = await source_config(self.source, manifest, where)
        outcomes: list[LayerOutcome | None] = [None] * len(manifest.layers)

        async def convert_one(position: int) -> None:
            outcomes[position] = await self._convert_layer_once(
                manifest.layers[position], diff_ids[position], f"{where} layer {position + 1}"
            )

        await each(range(len(manifest.layers)), convert_one)
        done = [o for o in outcomes if o is not None]
        self.outcomes.extend(o for o in done if o not in self.outcomes)
        return await put_image(
            self.layers.target,
            config,
            [o.result for o in done],
            [o.diff_id for o in done],
            annotations=manifest.annotations,
            extra=manifest.extra,
            root=is_root,
        )

    async def _convert_layer_once(
        self, layer: Descriptor, diff_id: str, where: str
    ) -> LayerOutcome:
        lock = self._layer_locks.setdefault(layer.digest, trio.Lock())
        async with lock:
            if layer.digest not in self._converted_layers:
                outcome = await self._convert_layer(layer, diff_id, where)
                self._converted_layers[layer.digest] = outcome
            return self._converted_layers[layer.digest]

    async def _convert_layer(self, layer: Descriptor, diff_id: str, where: str) -> LayerOutcome:
        started = time.monotonic()
        probe = await probe_layer(self.source, layer, where)
        name = f"{short_digest(layer.digest)}-{id(probe)}"
        if probe.format is LayerFormat.ESTARGZ:
            result, transfer = await self.layers.keep(
                probe, partial(self._uncompressed_size, layer), name
            )
            outcome = LayerOutcome(
                layer,
                result,
                diff_id,
                transfer,
                source_format=probe.format,
                converted=False,
                seconds=0.0,
            )
            self.progress.line(
                f"{where}: {short_digest(layer.digest)} is eStargz already, kept "
                f"({human_size(layer.size)})"
            )
            return outcome
        raw = self.layers.workdir / f"src-{name}"
        await self.layers.download(layer, raw)
        options = replace(
            writer_options(self.options.chunk_size, self.options.compression_level),
            workers=self.options.workers,
        )
        try:
            # The writer reads the decompressed stream as it goes: no tar file on disk.
            written = await self.layers.write(partial(_decompressed, raw), options, name)
        except FormatError as exc:
            raise FormatError(f"{where}: {exc}") from None
        raw.unlink()
        result, transfer = await self.layers.upload(written)
        seconds = time.monotonic() - started
        self.progress.line(
            f"{where}: {short_digest(layer.digest)} {probe.format.value} "
            f"{human_size(layer.size)} -> eStargz {short_digest(written.digest)} "
            f"{human_size(written.size)} in {seconds:.1f}s"
        )
        return LayerOutcome(
            layer,
            result,
            written.diff_id,
            transfer,
            source_format=probe.format,
            converted=True,
            seconds=seconds,
        )

    async def _uncompressed_size(self, layer: Descriptor) -> int:
        raw = self.layers.workdir / f"size-{short_digest(layer.digest)}"
        await self.layers.download(layer, raw)

        def count() -> int:
            total = 0
            with _decompressed(raw) as stream:
                while piece := stream.read(1 << 20):
                    total += len(piece)
            return total

        try:
            return await trio.to_thread.run_sync(count)
        finally:
            raw.unlink(missing_ok=True)


@contextmanager
def _decompressed(blob: Path) -> Iterator[BinaryIO]:
    """The layer blob's uncompressed tar, as a stream."""
    with blob.open("rb") as compressed:
        yield decompressed_stream(compressed)
