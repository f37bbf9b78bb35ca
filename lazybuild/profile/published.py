"""The workload record an image carries, used when the image runs.

``lazybuild build`` publishes what the image's workload read (``artifact``) next to the
image manifest. Rewriting layers to put those files first is only done for the layers
the build made (or with ``--optimize-base``), since rewritten base layers are no longer
shared. The record still covers every layer, so a lazy run fetches the listed files of
base layers too, in large requests in the order the workload read them, as it starts.
A record is a hint: a missing or broken one costs only speed, and every chunk is
verified against its layer's TOC whatever the record says.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from lazybuild.errors import FormatError
from lazybuild.oci.manifest import Index, Manifest
from lazybuild.profile.artifact import find_record
from lazybuild.profile.record import RECORD_MEDIA_TYPE, RecordEntry, decode_record
from lazybuild.registry.client import RegistryClient, ResolvedManifest

# A record lists files, one short JSON line each; anything far bigger is not one.
MAX_RECORD_BYTES = 16 << 20


async def published_record(client: RegistryClient, image: ResolvedManifest) -> list[RecordEntry]:
    """The record published with ``image`` (empty when it has none)."""
    if image.index is None or not isinstance(image.index.document, Index):
        return []
    entry = find_record(image.index.document, image.manifest_digest)
    if entry is None:
        return []
    where = f"workload record {entry.digest} of {image.ref}"
    fetched = await client.get_manifest(image.ref.with_digest(entry.digest))
    artifact = fetched.document
    if not isinstance(artifact, Manifest):
        raise FormatError(f"{where}: an index, not an artifact manifest")
    blobs = [layer for layer in artifact.layers if layer.media_type == RECORD_MEDIA_TYPE]
    if len(blobs) != 1:
        raise FormatError(f"{where}: {len(blobs)} record blobs, expected 1")
    if blobs[0].size > MAX_RECORD_BYTES:
        raise FormatError(f"{where}: {blobs[0].size} bytes is too big for a record")
    data = await client.get_blob(image.ref, blobs[0])
    return decode_record(data, where)


@dataclass(frozen=True)
class PrefetchPlan:
    """What a run fetches as it starts: by layer digest, the recorded paths in record
    order, and the places read of big files (by layer digest and path)."""

    files: dict[str, list[str]]
    ranges: dict[str, dict[str, list[tuple[int, int]]]]


def prefetch_plan(entries: Sequence[RecordEntry], image: ResolvedManifest) -> PrefetchPlan:
    """The recorded paths (and places) by the digest of the layer that serves each, in
    record order. Entries about another manifest, or without a layer, say nothing about
    this one."""
    layers = image.manifest.layers
    plan = PrefetchPlan({}, {})
    for entry in entries:
        if entry.manifest_digest not in (None, image.manifest_digest):
            continue
        if entry.layer_index is None or entry.layer_index >= len(layers):
            continue
        digest = layers[entry.layer_index].digest
        plan.files.setdefault(digest, []).append(entry.path)
        if entry.read_ranges:
            plan.ranges.setdefault(digest, {})[entry.path] = list(entry.read_ranges)
    return plan
