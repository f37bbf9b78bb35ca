"""One layer rewritten as eStargz: the part every image-rewriting command shares.

``convert``, ``optimize`` and a build's ``--optimize-base`` all take a layer blob, get
its uncompressed tar (from the whole blob, verified against its digest first), write it
as eStargz and list the result with the annotations lazy pullers look for; or keep an
eStargz blob byte for byte. What differs between them (which files go first, where the
result is kept, what is reported) stays with the caller.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Awaitable, Callable, Iterable
from contextlib import AbstractContextManager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import BinaryIO, TypeVar

import trio

from lazybuild.errors import one_error
from lazybuild.estargz.layerformat import decompressed_stream
from lazybuild.estargz.writer import WriterOptions, WrittenLayer, write_estargz
from lazybuild.image.layerprobe import LayerProbe
from lazybuild.image.store import ImageSource, ImageTarget, copy_blob, listed_as_estargz
from lazybuild.oci import mediatypes
from lazybuild.oci.descriptor import Descriptor

__all__ = [
    "LayerRewriter",
    "RewrittenLayer",
    "decompress_blob",
    "each",
    "estargz_layer_descriptor",
    "write_estargz_file",
    "writer_options",
]

# Downloads and uploads overlap; compression already uses every core inside the writer.
TRANSFER_CONCURRENCY = 4
_COPY_PIECE = 1 << 20

T = TypeVar("T")


@dataclass(frozen=True)
class RewrittenLayer:
    """A layer of a rewritten image: the source's blob, how the new manifest lists the
    result (the same blob, kept, or a new one), its diff_id, and what the target did
    with the blob: exists, mounted or uploaded."""

    source: Descriptor
    result: Descriptor
    diff_id: str
    transfer: str


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


def writer_options(chunk_size: int, compression_level: int | None) -> WriterOptions:
    """The writer's options from a command's flags; no level given: the writer's own."""
    options = WriterOptions(chunk_size=chunk_size)
    if compression_level is None:
        return options
    return replace(options, compression_level=compression_level)


async def each(items: Iterable[T], work: Callable[[T], Awaitable[None]]) -> None:
    """``work`` on every item at once; the first failure cancels the others."""
    with one_error():  # one failed layer is the error, not a group of it
        async with trio.open_nursery() as nursery:
            for item in items:
                nursery.start_soon(work, item)


def decompress_blob(blob: Path, tar: BinaryIO) -> None:
    """The uncompressed tar of the layer blob at ``blob``, copied into ``tar``. Blocking."""
    with blob.open("rb") as raw:
        shutil.copyfileobj(decompressed_stream(raw), tar, _COPY_PIECE)


def write_estargz_file(
    tar: BinaryIO, staged: Path, options: WriterOptions, *, durable: bool = False
) -> WrittenLayer:
    """``tar`` written as eStargz into ``staged``, which is removed again when writing
    fails: callers rename only complete blobs into place. ``durable``: on disk before
    it returns, for blobs kept across runs. Blocking."""
    try:
        with staged.open("wb") as out:
            written = write_estargz(tar, out, options)
            if durable:
                out.flush()
                os.fsync(out.fileno())
    except BaseException:
        staged.unlink(missing_ok=True)
        raise
    return written


class LayerRewriter:
    """Layers of ``source`` rewritten for ``target``, with scratch files in ``workdir``:
    downloads and uploads under one limit, compression one layer at a time (the
    writer already uses every core). ``name`` arguments tell a layer's scratch files
    apart."""

    def __init__(self, source: ImageSource, target: ImageTarget, workdir: Path) -> None:
        self.source = source
        self.target = target
        self.workdir = workdir
        self.transfers = trio.CapacityLimiter(TRANSFER_CONCURRENCY)
        self._compressor = trio.CapacityLimiter(1)

    async def download(self, layer: Descriptor, dest: Path) -> None:
        """The whole blob at ``dest``, verified against its digest."""
        async with self.transfers:
            await self.source.download(layer, dest)

    async def download_tar(self, layer: Descriptor, name: str) -> Path:
        """The layer's uncompressed tar, from the verified blob (which is not kept)."""
        blob = self.workdir / f"blob-{name}"
        tar = self.workdir / f"tar-{name}"
        await self.download(layer, blob)

        def decompress() -> None:
            with tar.open("wb") as out:
                decompress_blob(blob, out)

        try:
            await trio.to_thread.run_sync(decompress)
        finally:
            blob.unlink(missing_ok=True)
        return tar

    async def write(
        self,
        open_tar: Callable[[], AbstractContextManager[BinaryIO]],
        options: WriterOptions,
        name: str,
    ) -> WrittenLayer:
        """The tar ``open_tar`` opens, written as eStargz (in a thread) and held for
        ``upload``."""

        def write() -> WrittenLayer:
            staged = self.workdir / f"out-{name}"
            with open_tar() as tar:
                written = write_estargz_file(tar, staged, options)
            staged.rename(self._output_path(written.digest))
            return written

        async with self._compressor:
            return await trio.to_thread.run_sync(write)

    async def upload(self, written: WrittenLayer) -> tuple[Descriptor, str]:
        """A blob ``write`` made, put to the target (then dropped here): how a manifest
        lists it, and what the target did (exists, mounted or uploaded)."""
        result = estargz_layer_descriptor(written)
        out = self._output_path(written.digest)
        async with self.transfers:
            transfer = await self.target.put_blob(result, out)
        out.unlink(missing_ok=True)
        return result, transfer

    async def keep(
        self, probe: LayerProbe, uncompressed_size: Callable[[], Awaitable[int]], name: str
    ) -> tuple[Descriptor, str]:
        """An eStargz layer kept byte for byte: listed as one (``uncompressed_size``
        asked only when the blob lacks its annotation) and copied to the target."""
        layer = probe.descriptor
        assert probe.opened is not None
        result = await listed_as_estargz(layer, probe.opened.toc_digest, uncompressed_size)
        transfer = await copy_blob(
            self.source,
            self.target,
            layer,
            listed_as=result,
            scratch=self.workdir / f"keep-{name}",
            transfers=self.transfers,
        )
        return result, transfer

    def _output_path(self, digest: str) -> Path:
        return self.workdir / f"estargz-{digest.split(':', 1)[1]}"
