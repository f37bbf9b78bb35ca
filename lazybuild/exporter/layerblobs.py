"""A build step's layer directory as an eStargz blob, compressed once and kept.

A ``LocalLayer`` never changes after it is committed, so its blob depends only on the
layer id and on what shapes the bytes: the writer's chunk size, gzip level and
prioritized files, and SOURCE_DATE_EPOCH (which clamps mtimes). Those make the cache
key; the worker count does not (the writer's output does not depend on it).

Cache files, in ``LayerStore.blobs_dir``:

``<layer id>-<fingerprint>.esgz``   the blob
``<layer id>-<fingerprint>.json``   its descriptor and diff_id (the sidecar)

Base layers rewritten by ``--optimize-base`` (``baseblobs``) are kept the same way, as
``base-<blob digest hex>-<fingerprint>``: a base blob never changes either.

The blob is written under the store's staging directory and renamed into place, then
the sidecar is written the same way. A blob counts only when its sidecar exists and its
size matches, so a crash at any point leaves either nothing that is read, or a blob
that is simply written again. Leftover temp files are in staging, which the next build
clears (``LayerStore.clean_staging``). Consumers verify the digest while copying or
uploading a blob, so a blob damaged on disk later fails there rather than being
published.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, BinaryIO

import trio

from lazybuild.errors import LazybuildError
from lazybuild.estargz.writer import WriterOptions, WrittenLayer
from lazybuild.image.layerrewrite import each, estargz_layer_descriptor, write_estargz_file
from lazybuild.oci.descriptor import Descriptor
from lazybuild.snapshot.diff import write_upper_as_tar
from lazybuild.state.atomicfile import write_atomic
from lazybuild.worker.layers import LocalLayer
from lazybuild.worker.layerstore import LayerStore

__all__ = [
    "LayerBlob",
    "cached_blob",
    "cached_blob_or_none",
    "local_layer_blob",
    "local_layer_blobs",
    "writer_fingerprint",
]

# Bump when the bytes made from the same layer and options change (diff or writer), so
# blobs cached by an older lazybuild are not reused.
BLOB_FORMAT_VERSION = 1
_SIDECAR_VERSION = 1
# Compression already uses every core inside the writer; two layers at once keep the
# cores busy while the other one walks its tree or writes its tar.
DEFAULT_COMPRESSION_CONCURRENCY = 2


class LayerBlobError(LazybuildError):
    """A local layer that cannot be turned into a blob (gone, unreadable)."""


@dataclass(frozen=True)
class LayerBlob:
    """An eStargz blob of a local layer: ``descriptor`` carries the TOC digest and
    uncompressed size annotations; ``path`` is the cached file (do not modify it)."""

    descriptor: Descriptor
    diff_id: str
    path: Path


def writer_fingerprint(options: WriterOptions, source_date_epoch: int | None) -> str:
    """What of the writer options and epoch shapes a blob's bytes, as a short hash."""
    shaping = {
        "format": BLOB_FORMAT_VERSION,
        "chunk_size": options.chunk_size,
        "compression_level": options.compression_level,
        "prioritized_files": list(options.prioritized_files or ()),
        "source_date_epoch": source_date_epoch,
    }
    if options.big_file_chunk_size is not None:  # absent by default: names stay as they were
        shaping["big_file_chunk_size"] = options.big_file_chunk_size
    encoded = json.dumps(shaping, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(encoded).hexdigest()[:16]


async def local_layer_blob(
    layer: LocalLayer,
    store: LayerStore,
    options: WriterOptions,
    *,
    source_date_epoch: int | None,
) -> LayerBlob:
    """The layer as an eStargz blob, from the cache or compressed now (in a thread)."""
    return await trio.to_thread.run_sync(
        _cached_or_written, layer, store, options, source_date_epoch
    )


async def local_layer_blobs(
    layers: Sequence[LocalLayer],
    store: LayerStore,
    options: WriterOptions,
    *,
    source_date_epoch: int | None,
    concurrency: int = DEFAULT_COMPRESSION_CONCURRENCY,
    on_done: Callable[[LocalLayer, LayerBlob], None] | None = None,
    prioritized: Mapping[str, Sequence[str]] | None = None,
) -> dict[str, LayerBlob]:
    """Blobs of ``layers`` by layer id, at most ``concurrency`` compressed at once; a layer
    listed twice is compressed once. ``prioritized`` gives, by layer id, the files a
    layer puts first (before ``.prefetch.landmark``)."""
    limiter = trio.CapacityLimiter(max(1, concurrency))
    unique = {layer.id: layer for layer in layers}
    blobs: dict[str, LayerBlob] = {}

    async def one(layer: LocalLayer) -> None:
        async with limiter:
            first = (prioritized or {}).get(layer.id)
            chosen = options if first is None else replace(options, prioritized_files=list(first))
            blob = await local_layer_blob(layer, store, chosen, source_date_epoch=source_date_epoch)
        blobs[layer.id] = blob
        if on_done is not None:
            on_done(layer, blob)

    await each(unique.values(), one)
    return blobs


def _cached_or_written(
    layer: LocalLayer, store: LayerStore, options: WriterOptions, epoch: int | None
) -> LayerBlob:
    name = f"{layer.id}-{writer_fingerprint(options, epoch)}"

    def fill_tar(tar: BinaryIO) -> None:
        if not layer.path.is_dir():
            raise LayerBlobError(
                f"layer {layer.id} is gone from {layer.path} (pruned?); rebuild without cache"
            )
        write_upper_as_tar(layer.path, tar, source_date_epoch=epoch)

    return cached_blob(store, name, fill_tar, options)


def cached_blob(
    store: LayerStore, name: str, fill_tar: Callable[[BinaryIO], None], options: WriterOptions
) -> LayerBlob:
    """The blob cached as ``name``, or the one written now from the tar ``fill_tar``
    writes (called only on a miss) and kept under that name. Blocking."""
    blob_path = store.blobs_dir / f"{name}.esgz"
    sidecar_path = store.blobs_dir / f"{name}.json"
    cached = _read_sidecar(sidecar_path, blob_path)
    if cached is not None:
        return cached
    written = _write_blob(fill_tar, store, blob_path, options)
    blob = LayerBlob(estargz_layer_descriptor(written), written.diff_id, blob_path)
    write_atomic(sidecar_path, _encode_sidecar(blob), durable=True, staging_dir=store.staging_dir)
    return blob


def cached_blob_or_none(store: LayerStore, name: str) -> LayerBlob | None:
    """The blob cached as ``name``, if there is a complete one."""
    return _read_sidecar(store.blobs_dir / f"{name}.json", store.blobs_dir / f"{name}.esgz")


def _write_blob(
    fill_tar: Callable[[BinaryIO], None],
    store: LayerStore,
    blob_path: Path,
    options: WriterOptions,
) -> WrittenLayer:
    tar_path = store.staging_file("export", ".tar")
    staged = tar_path.with_suffix(".esgz")
    try:
        # The writer needs a seekable tar (it reorders entries), so the diff goes to a file.
        with tar_path.open("w+b") as tar:
            fill_tar(tar)
            tar.seek(0)
            written = write_estargz_file(tar, staged, options, durable=True)
        os.replace(staged, blob_path)
    finally:
        tar_path.unlink(missing_ok=True)
        staged.unlink(missing_ok=True)
    return written


def _encode_sidecar(blob: LayerBlob) -> bytes:
    document = {
        "version": _SIDECAR_VERSION,
        "descriptor": blob.descriptor.to_json(),
        "diff_id": blob.diff_id,
    }
    return json.dumps(document, sort_keys=True).encode()


def _read_sidecar(sidecar_path: Path, blob_path: Path) -> LayerBlob | None:
    """The cached blob, or None when there is none or it is incomplete or unreadable."""
    try:
        document: Any = json.loads(sidecar_path.read_bytes())
        if document.get("version") != _SIDECAR_VERSION:
            return None
        descriptor = Descriptor.from_json(document["descriptor"], str(sidecar_path))
        diff_id = str(document["diff_id"])
        size = blob_path.stat().st_size
    except (OSError, ValueError, KeyError, AttributeError, LazybuildError):
        return None
    if size != descriptor.size:
        return None
    return LayerBlob(descriptor, diff_id, blob_path)
