"""Convert an image's layers to eStargz, keeping its config and history right.

Per platform manifest: every layer is probed; eStargz layers are kept byte for byte,
all others are downloaded (verified), decompressed and written as eStargz. The config's
``rootfs.diff_ids`` follow the new layers, each new layer descriptor carries the
``toc.digest`` and uncompressed-size annotations, and OCI media types are used
throughout (Docker media types drop those annotations in some tools).
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import time
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import trio

from lazybuild.errors import FormatError, one_error
from lazybuild.estargz.layerformat import LayerFormat, decompressed_stream
from lazybuild.estargz.writer import WriterOptions, WrittenLayer, write_estargz
from lazybuild.image.layerprobe import LayerProbe, probe_layer
from lazybuild.image.store import (
    ImageSource,
    ImageTarget,
    RootDocument,
    copy_blob,
    listed_as_estargz,
)
from lazybuild.oci import mediatypes
from lazybuild.oci.descriptor import Descriptor
from lazybuild.oci.manifest import Index, Manifest, config_diff_ids, encode_json, load_config
from lazybuild.oci.platform import Platform
from lazybuild.progress.lines import Progress, human_size, short_digest

# Downloads and uploads overlap; compression already uses every core inside the writer.
_TRANSFER_CONCURRENCY = 4


def estargz_layer_descriptor(written: WrittenLayer) -> Descriptor:
    """The descriptor of a layer lazybuild wrote as eStargz: OCI gzip media type, with
    the TOC digest and uncompressed size annotations lazy pullers look for, and
    lazybuild's own hints where the TOC and the prefetch region are."""
    annotations = {
        mediatypes.TOC_DIGEST_ANNOTATION: written.toc_digest,
        mediatypes.UNCOMPRESSED_SIZE_ANNOTATION: str(written.uncompressed_size),
        mediatypes.TOC_OFFSET_ANNOTATION: str(written.toc_offset),
    }
    if written.prefetch_region_size:
        annotations[mediatypes.PREFETCH_REGION_ANNOTATION] = str(written.prefetch_region_size)
    # Sorted, as a descriptor read back from the layer cache's sidecar is: the same
    # layer must make the same manifest bytes whether it was written now or reused.
    return Descriptor(
        mediatypes.OCI_LAYER_GZIP, written.digest, written.size, dict(sorted(annotations.items()))
    )


@dataclass(frozen=True)
class ConvertOptions:
    chunk_size: int = 4 << 20
    compression_level: int | None = None
    platform: Platform | None = None  # None converts every platform of an index
    workers: int = field(default_factory=lambda: os.cpu_count() or 1)
    tmpdir: Path | None = None


@dataclass(frozen=True)
class LayerOutcome:
    source: Descriptor
    source_format: LayerFormat
    result: Descriptor
    diff_id: str
    converted: bool
    transfer: str  # what the target did with the blob: "exists", "mounted" or "uploaded"
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
        converter = _Converter(source, target, options, progress, Path(tmp))
        if isinstance(root.document, Manifest):
            descriptor = await converter.convert_manifest(root, is_root=True)
        else:
            descriptor = await converter.convert_index(root, root.document)
    return ConvertResult(descriptor, tuple(converter.outcomes))


class _Converter:
    def __init__(
        self,
        source: ImageSource,
        target: ImageTarget,
        options: ConvertOptions,
        progress: Progress,
        workdir: Path,
    ) -> None:
        self.source = source
        self.target = target
        self.options = options
        self.progress = progress
        self.workdir = workdir
        self.outcomes: list[LayerOutcome] = []
        self.transfers = trio.CapacityLimiter(_TRANSFER_CONCURRENCY)
        self.compressor = trio.CapacityLimiter(1)
        # A layer listed twice (in one manifest or across platforms) is converted once.
        self._layer_locks: dict[str, trio.Lock] = {}
        self._converted_layers: dict[str, LayerOutcome] = {}

    async def convert_index(self, root: RootDocument, index: Index) -> Descriptor:
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
            data = await self.source.fetch(entry)
            child = RootDocument(entry, data, _as_manifest(data, entry, self.source.description))
            self.progress.line(f"platform {entry.platform}")
            converted = await self.convert_manifest(child, is_root=False)
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
        data = new_index.encode()
        descriptor = _descriptor_for(mediatypes.OCI_INDEX, data)
        await self.target.put_manifest(descriptor, data, root=True)
        return descriptor

    async def convert_manifest(self, root: RootDocument, *, is_root: bool) -> Descriptor:
        manifest = root.document
        assert isinstance(manifest, Manifest)
        where = f"{self.source.description} ({short_digest(root.descriptor.digest)})"
        config_bytes = await self.source.fetch(manifest.config)
        config = load_config(config_bytes, f"{where} config")
        diff_ids = config_diff_ids(config)
        if len(diff_ids) != len(manifest.layers):
            raise FormatError(
                f"{where}: config lists {len(diff_ids)} diff_ids for {len(manifest.layers)} layers"
            )
        outcomes: list[LayerOutcome | None] = [None] * len(manifest.layers)

        async def convert_one(position: int) -> None:
            outcomes[position] = await self._convert_layer_once(
                manifest.layers[position], diff_ids[position], f"{where} layer {position + 1}"
            )

        with one_error():  # one failed layer is the error, not a group of it
            async with trio.open_nursery() as nursery:
                for position in range(len(manifest.layers)):
                    nursery.start_soon(convert_one, position)
        done = [o for o in outcomes if o is not None]
        self.outcomes.extend(o for o in done if o not in self.outcomes)

        new_config = _rewrite_config(config, [o.diff_id for o in done])
        new_config_bytes = encode_json(new_config)
        config_descriptor = _descriptor_for(mediatypes.OCI_CONFIG, new_config_bytes)
        await self.target.put_blob(config_descriptor, new_config_bytes)
        new_manifest = Manifest(
            mediatypes.OCI_MANIFEST,
            config_descriptor,
            tuple(o.result for o in done),
            manifest.annotations,
            manifest.extra,
        )
        data = new_manifest.encode()
        descriptor = _descriptor_for(mediatypes.OCI_MANIFEST, data)
        await self.target.put_manifest(descriptor, data, root=is_root)
        return descriptor

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
        if probe.format is LayerFormat.ESTARGZ:
            result, transfer = await self._keep_estargz(probe, where)
            outcome = LayerOutcome(
                layer,
                probe.format,
                result,
                diff_id,
                converted=False,
                transfer=transfer,
                seconds=0.0,
            )
            self.progress.line(
                f"{where}: {short_digest(layer.digest)} is eStargz already, kept "
                f"({human_size(layer.size)})"
            )
            return outcome
        raw = self.workdir / f"src-{short_digest(layer.digest)}-{id(probe)}"
        async with self.transfers:
            await self.source.download(layer, raw)
        async with self.compressor:
            try:
                written = await trio.to_thread.run_sync(self._write_estargz, raw, probe)
            except FormatError as exc:
                raise FormatError(f"{where}: {exc}") from None
        raw.unlink()
        result = estargz_layer_descriptor(written)
        out = self._output_path(written.digest)
        async with self.transfers:
            transfer = await self.target.put_blob(result, out)
        out.unlink()
        seconds = time.monotonic() - started
        self.progress.line(
            f"{where}: {short_digest(layer.digest)} {probe.format.value} "
            f"{human_size(layer.size)} -> eStargz {short_digest(written.digest)} "
            f"{human_size(written.size)} in {seconds:.1f}s"
        )
        return LayerOutcome(
            layer,
            probe.format,
            result,
            written.diff_id,
            converted=True,
            transfer=transfer,
            seconds=seconds,
        )

    def _write_estargz(self, raw: Path, probe: LayerProbe) -> WrittenLayer:
        options: dict[str, Any] = {"chunk_size": self.options.chunk_size}
        if self.options.compression_level is not None:
            options["compression_level"] = self.options.compression_level
        options["workers"] = self.options.workers
        staged = self.workdir / f"out-{id(probe)}"
        try:
            with raw.open("rb") as compressed, staged.open("wb") as out:
                stream = decompressed_stream(compressed)
                written = write_estargz(stream, out, WriterOptions(**options))
        except BaseException:
            staged.unlink(missing_ok=True)
            raise
        staged.rename(self._output_path(written.digest))
        return written

    def _output_path(self, digest: str) -> Path:
        return self.workdir / f"estargz-{digest.split(':', 1)[1]}"

    async def _keep_estargz(self, probe: LayerProbe, where: str) -> tuple[Descriptor, str]:
        layer = probe.descriptor
        assert probe.opened is not None
        result = await listed_as_estargz(
            layer, probe.opened.toc_digest, partial(self._uncompressed_size, layer, where)
        )
        transfer = await copy_blob(
            self.source,
            self.target,
            layer,
            listed_as=result,
            scratch=self.workdir / f"keep-{short_digest(layer.digest)}-{id(probe)}",
            transfers=self.transfers,
        )
        return result, transfer

    async def _uncompressed_size(self, layer: Descriptor, where: str) -> int:
        raw = self.workdir / f"size-{short_digest(layer.digest)}"
        async with self.transfers:
            await self.source.download(layer, raw)

        def count() -> int:
            total = 0
            with raw.open("rb") as compressed:
                stream = decompressed_stream(compressed)
                while piece := stream.read(1 << 20):
                    total += len(piece)
            return total

        try:
            return await trio.to_thread.run_sync(count)
        finally:
            raw.unlink(missing_ok=True)


def _as_manifest(data: bytes, entry: Descriptor, where: str) -> Manifest:
    from lazybuild.oci.manifest import parse_document

    document = parse_document(data, entry.media_type, f"{where} ({short_digest(entry.digest)})")
    if not isinstance(document, Manifest):
        raise FormatError(f"{where}: index entry {entry.digest} is not an image manifest")
    return document


def _descriptor_for(media_type: str, data: bytes) -> Descriptor:
    return Descriptor(media_type, "sha256:" + hashlib.sha256(data).hexdigest(), len(data))


def _rewrite_config(config: dict[str, Any], diff_ids: list[str]) -> dict[str, Any]:
    """The config with new diff_ids; history, env and everything else untouched."""
    rewritten: dict[str, Any] = json.loads(json.dumps(config))
    rewritten["rootfs"] = {**config["rootfs"], "type": "layers", "diff_ids": diff_ids}
    return rewritten
