"""The layers of the image being exported, and files of their bytes when an output
needs them.

A local layer's bytes are its cached eStargz blob, and so are those of a base layer
rewritten by ``--optimize-base``. A remote layer's bytes stay in its
registry until an output cannot do without them (a tarball, a push to another
registry); then they are downloaded once per export, verified while streaming, into
the export's scratch directory.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from contextlib import aclosing
from dataclasses import dataclass
from pathlib import Path

import trio

from lazybuild.exporter.image import ExportedLayer, oci_layer_descriptor
from lazybuild.exporter.layerblobs import LayerBlob
from lazybuild.oci.descriptor import Descriptor
from lazybuild.oci.layout import OciLayout
from lazybuild.oci.localblob import layout_of
from lazybuild.progress.lines import human_size, short_digest
from lazybuild.registry.client import RegistryClient
from lazybuild.registry.reference import Reference
from lazybuild.worker.layers import Layer, LocalLayer, RemoteLayer

__all__ = ["BlobFiles", "PreparedLayer", "prepare_layers"]


@dataclass(frozen=True)
class PreparedLayer:
    """A layer ready to be listed in a manifest: ``descriptor`` as the manifest has it;
    ``local_blob`` for a build step's layer, ``remote`` for a base image's."""

    descriptor: Descriptor
    diff_id: str
    remote: RemoteLayer | None = None
    local_blob: Path | None = None

    @property
    def exported(self) -> ExportedLayer:
        return ExportedLayer(self.descriptor, self.diff_id)


def prepare_layers(
    layers: Sequence[Layer],
    local_blobs: dict[str, LayerBlob],
    base_blobs: dict[str, LayerBlob] | None = None,
) -> list[PreparedLayer]:
    """``layers`` in order, local ones with the blobs made for them (by layer id), remote
    ones with their rewritten blob where ``base_blobs`` has one (by source digest)."""
    prepared = []
    for layer in layers:
        blob = (
            local_blobs[layer.id]
            if isinstance(layer, LocalLayer)
            else (base_blobs or {}).get(layer.descriptor.digest)
        )
        if blob is not None:
            prepared.append(PreparedLayer(blob.descriptor, blob.diff_id, local_blob=blob.path))
        elif isinstance(layer, RemoteLayer):
            descriptor = oci_layer_descriptor(layer.descriptor)
            prepared.append(PreparedLayer(descriptor, layer.diff_id, remote=layer))
    return prepared


class BlobFiles:
    """Files holding layer blobs, by digest; remote ones fetched on first use."""

    def __init__(
        self,
        registry: RegistryClient,
        layers: Sequence[PreparedLayer],
        scratch: Path,
        progress: Callable[[str], None],
    ) -> None:
        self._registry = registry
        self._scratch = scratch
        self._progress = progress
        self._layers = {layer.descriptor.digest: layer for layer in layers}
        self._locks: dict[str, trio.Lock] = {}
        self._downloaded: dict[str, Path] = {}

    async def path(self, digest: str) -> Path:
        layer = self._layers[digest]
        if layer.local_blob is not None:
            return layer.local_blob
        assert layer.remote is not None
        lock = self._locks.setdefault(digest, trio.Lock())
        async with lock:
            if digest not in self._downloaded:
                self._downloaded[digest] = await self._download(layer.remote)
            return self._downloaded[digest]

    async def _download(self, layer: RemoteLayer) -> Path:
        descriptor = layer.descriptor
        layout = layout_of(layer.source)
        if layout is not None:
            # A layer of a local build cache: the file is here; the push verifies it
            # against its digest as it goes up.
            return OciLayout(layout).blob_path(descriptor.digest)
        source = Reference.parse(layer.source)
        self._progress(
            f"downloading base layer {short_digest(descriptor.digest)} "
            f"({human_size(descriptor.size)}) from {source.name}"
        )
        hex_digest = descriptor.digest.split(":", 1)[1]
        final = self._scratch / f"remote-{hex_digest}"
        partial = self._scratch / f"remote-{hex_digest}.partial"
        try:
            pieces = self._registry.stream_blob(source, descriptor)
            # Closed at once when a write fails, so its connection is released.
            async with await trio.open_file(partial, "wb") as out, aclosing(pieces):
                # stream_blob checks the digest after the last piece and raises on a
                # mismatch, so a bad blob never gets its final name.
                async for piece in pieces:
                    await out.write(piece)
            os.replace(partial, final)
        finally:
            partial.unlink(missing_ok=True)
        return final
