"""Base image layers rewritten as eStargz with a workload's files first (``--optimize-base``).

By default a build leaves its base image's layers byte for byte, so they stay shared
with every other image on that base and a push mounts them across repositories. When
the user asks for the base layers to be optimized too, each is downloaded whole
(verified against its digest), decompressed, and written again with the files the
workload read from it first and ``.prefetch.landmark`` after them
(``.no.prefetch.landmark`` when it read none). The result is cached like a step's
blob (``layerblobs.cached_blob``), keyed by the source blob's digest and what shapes
the bytes, so a rebuild with the same profile downloads and compresses nothing.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from functools import partial
from pathlib import Path

import trio

from lazybuild.estargz.toc import BIG_FILE_CHUNK_SIZE
from lazybuild.estargz.writer import WriterOptions
from lazybuild.exporter.layerblobs import (
    LayerBlob,
    cached_blob,
    cached_blob_or_none,
    writer_fingerprint,
)
from lazybuild.image.layerrewrite import decompress_blob, each
from lazybuild.image.store import LayoutSource, RegistrySource
from lazybuild.oci.layout import OciLayout
from lazybuild.oci.localblob import layout_of
from lazybuild.progress.lines import human_size, short_digest
from lazybuild.registry.client import RegistryClient
from lazybuild.registry.reference import Reference
from lazybuild.worker.layers import RemoteLayer
from lazybuild.worker.layerstore import LayerStore

__all__ = ["rewritten_base_blobs"]

_DOWNLOAD_CONCURRENCY = 4


async def rewritten_base_blobs(
    layers: Sequence[RemoteLayer],
    prioritized: Mapping[str, Sequence[str]],
    *,
    store: LayerStore,
    registry: RegistryClient,
    options: WriterOptions,
    progress: Callable[[str], None],
    concurrency: int,
) -> dict[str, LayerBlob]:
    """By source blob digest, each of ``layers`` rewritten with ``prioritized[digest]``
    (the files to put first, in order; none: no prefetch) first."""
    downloads = trio.CapacityLimiter(_DOWNLOAD_CONCURRENCY)
    compressions = trio.CapacityLimiter(max(1, concurrency))
    unique = {layer.descriptor.digest: layer for layer in layers}
    blobs: dict[str, LayerBlob] = {}

    async def one(layer: RemoteLayer) -> None:
        digest = layer.descriptor.digest
        first = list(prioritized.get(digest, ()))
        chosen = replace(
            options, prioritized_files=first or None, big_file_chunk_size=BIG_FILE_CHUNK_SIZE
        )
        name = _cache_name(digest, chosen)
        blob = await trio.to_thread.run_sync(cached_blob_or_none, store, name)
        if blob is None:
            staged = store.staging_file("base", ".blob")
            try:
                async with downloads:
                    await _download(registry, layer, staged, progress)
                async with compressions:
                    blob = await trio.to_thread.run_sync(
                        cached_blob, store, name, partial(decompress_blob, staged), chosen
                    )
            finally:
                staged.unlink(missing_ok=True)
        blobs[digest] = blob
        what = f"{len(first)} file(s) first" if first else "nothing read: no prefetch"
        progress(
            f"base layer {short_digest(digest)}: eStargz {short_digest(blob.descriptor.digest)} "
            f"({human_size(blob.descriptor.size)}), {what}"
        )

    await each(unique.values(), one)
    return blobs


def _cache_name(digest: str, options: WriterOptions) -> str:
    # Base layers keep their own mtimes: SOURCE_DATE_EPOCH applies to new layers only.
    return f"base-{digest.split(':', 1)[1]}-{writer_fingerprint(options, None)}"


async def _download(
    registry: RegistryClient, layer: RemoteLayer, dest: Path, progress: Callable[[str], None]
) -> None:
    descriptor = layer.descriptor
    layout = layout_of(layer.source)
    if layout is not None:  # a base image of an oci-layout:// context
        progress(
            f"reading base layer {short_digest(descriptor.digest)} "
            f"({human_size(descriptor.size)}) from the layout {layout} to optimize it"
        )
        # Copied while hashed: a blob that does not match is refused, the file removed.
        await LayoutSource(OciLayout(layout), None).download(descriptor, dest)
        return
    source = Reference.parse(layer.source)
    progress(
        f"downloading base layer {short_digest(descriptor.digest)} "
        f"({human_size(descriptor.size)}) from {source.name} to optimize it"
    )
    # The download checks the digest after the last piece and raises on a mismatch; the
    # caller then removes the file, so unverified bytes are never compressed.
    await RegistrySource(registry, source).download(descriptor, dest)
