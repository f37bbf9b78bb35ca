"""Pushing the exported image to a registry, moving as few bytes as possible.

Per layer: nothing when the target repository has the blob already. A base image's
layer on the same registry is mounted from the repository it came from (its bytes
never pass through this machine); from another registry it has to be streamed through
(downloaded, verified, uploaded), which is said. A build step's layer is uploaded from
its cached blob. The config goes up alongside them, and the manifest by tag only after
all of them, so the tag never names an image with missing blobs.

Pushing to several names, a later repository on the same registry mounts local layers
from an earlier one instead of uploading them again.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import trio

from lazybuild.errors import one_error
from lazybuild.exporter.content import BlobFiles, PreparedLayer
from lazybuild.exporter.image import AssembledImage
from lazybuild.oci.localblob import layout_of
from lazybuild.oci.platform import Platform
from lazybuild.profile.artifact import index_with_record, record_artifact
from lazybuild.progress import transfer
from lazybuild.progress.lines import human_size, short_digest
from lazybuild.registry.client import RegistryClient
from lazybuild.registry.reference import Reference

__all__ = ["PushReport", "push_image"]

# Uploads overlap; the registry and the link, not the CPU, are the limit.
_PUSH_CONCURRENCY = 4


@dataclass
class PushReport:
    """What happened to each layer blob pushed to ``name``: by outcome, the digests."""

    name: str
    manifest_digest: str = ""
    exists: list[str] = field(default_factory=list)
    mounted: list[str] = field(default_factory=list)
    uploaded: list[str] = field(default_factory=list)
    # Base layers from another registry (or one that refused to mount), copied through.
    copied: list[str] = field(default_factory=list)

    def summary(self) -> str:
        parts = [
            f"{len(items)} {word}"
            for word, items in (
                ("already there", self.exists),
                ("mounted", self.mounted),
                ("uploaded", self.uploaded),
                ("copied from another registry", self.copied),
            )
            if items
        ]
        return f"layers: {', '.join(parts) or 'none'}"


async def push_image(
    image: AssembledImage,
    layers: Sequence[PreparedLayer],
    names: Sequence[str],
    *,
    registry: RegistryClient,
    blobs: BlobFiles,
    progress: Callable[[str], None],
    record: WorkloadRecordAttachment | None = None,
) -> list[PushReport]:
    """Push ``image`` to every name in turn; one report per name. With ``record``, the
    name gets an index of the image and its workload record artifact."""
    reports = []
    pushed: list[Reference] = []
    # Long uploads said as lines, unless the command shows transfers already: not a live
    # view of our own, the build's display owns the terminal.
    with transfer.lines_unless_shown(progress):
        for name in names:
            ref = Reference.parse(name)
            progress(f"pushing {ref}")
            earlier = tuple(r for r in pushed if r.registry == ref.registry)
            report = await _push_one(
                image,
                layers,
                ref,
                earlier=earlier,
                registry=registry,
                blobs=blobs,
                progress=progress,
                record=record if ref.digest is None else None,
            )
            progress(f"pushed {ref}@{report.manifest_digest} ({report.summary()})")
            reports.append(report)
            pushed.append(ref)
    return reports


async def _push_one(
    image: AssembledImage,
    layers: Sequence[PreparedLayer],
    ref: Reference,
    *,
    earlier: tuple[Reference, ...],
    registry: RegistryClient,
    blobs: BlobFiles,
    progress: Callable[[str], None],
    record: WorkloadRecordAttachment | None,
) -> PushReport:
    """Blobs first, all at once (layers, config and the record's), then the manifests.
    With a record, the tag moves once, to an index of the image and its record artifact:
    registries keep the artifact (the index names it) and runtimes skip it (platform
    unknown); the two manifests go up by digest before it, side by side."""
    report = PushReport(str(ref))
    artifact = None
    if record is not None:
        artifact = record_artifact(
            record.record, image.manifest_descriptor, command=record.command, outcome=record.outcome
        )
    limiter = trio.CapacityLimiter(_PUSH_CONCURRENCY)
    unique = {layer.descriptor.digest: layer for layer in layers}

    async def push_layer(layer: PreparedLayer) -> None:
        async with limiter:
            outcome = await _push_layer(
                layer, ref, earlier=earlier, registry=registry, blobs=blobs, progress=progress
            )
        getattr(report, outcome).append(layer.descriptor.digest)

    # One failed upload is the error (not an exception group of it): one line for the CLI.
    with one_error():
        async with trio.open_nursery() as nursery:
            # The config goes up with the layers: each is a few round trips of its own.
            nursery.start_soon(registry.push_blob, ref, image.config_descriptor, image.config_bytes)
            for layer in unique.values():
                nursery.start_soon(push_layer, layer)
            for descriptor, data in artifact.blobs if artifact is not None else ():
                nursery.start_soon(registry.push_blob, ref, descriptor, data)
    media_type = image.manifest_descriptor.media_type
    if artifact is None or record is None:
        # A name given by digest (repo@sha256:...) is pushed by that digest, which
        # push_manifest checks against the bytes.
        report.manifest_digest = await registry.push_manifest(ref, image.manifest_bytes, media_type)
        return report
    image_ref = ref.by_digest(image.manifest_descriptor.digest)
    with one_error():
        async with trio.open_nursery() as nursery:
            nursery.start_soon(registry.push_manifest, image_ref, image.manifest_bytes, media_type)
            nursery.start_soon(
                registry.push_manifest,
                ref.by_digest(artifact.manifest.digest),
                artifact.manifest_bytes,
                artifact.manifest.media_type,
            )
    index, index_bytes = index_with_record(image.manifest_descriptor, record.platform, artifact)
    await registry.push_manifest(ref, index_bytes, index.media_type)
    report.manifest_digest = image.manifest_descriptor.digest
    return report


@dataclass(frozen=True)
class WorkloadRecordAttachment:
    """The workload record of a built image, to travel with it (``lazybuild.profile``)."""

    record: bytes
    command: tuple[str, ...]
    outcome: Mapping[str, object] | None
    platform: Platform


async def _push_layer(
    layer: PreparedLayer,
    ref: Reference,
    *,
    earlier: tuple[Reference, ...],
    registry: RegistryClient,
    blobs: BlobFiles,
    progress: Callable[[str], None],
) -> str:
    """Make the layer's blob exist in ``ref``'s repository; the outcome's report field."""
    descriptor = layer.descriptor
    if layer.remote is None:
        assert layer.local_blob is not None
        return await registry.push_blob(ref, descriptor, layer.local_blob, earlier)
    if await registry.has_blob(ref, descriptor.digest):
        return "exists"
    if layout_of(layer.remote.source) is not None:  # a local build cache's layer
        await registry.push_blob(ref, descriptor, await blobs.path(descriptor.digest), earlier)
        return "uploaded"
    source = Reference.parse(layer.remote.source)
    what = f"base layer {short_digest(descriptor.digest)} ({human_size(descriptor.size)})"
    if source.registry == ref.registry:
        if await registry.mount_blob(ref, descriptor.digest, (source, *earlier)):
            return "mounted"
        # The registry can refuse (mounting disabled, no pull access to the source):
        # copying through is then the only way, as BuildKit does; say what it costs.
        progress(f"{ref.registry} refused to mount {what} from {source.repository}; copying it")
    else:
        progress(f"{what} is on {source.registry}, not {ref.registry}: copying it through")
    path = await blobs.path(descriptor.digest)
    await registry.push_blob(ref, descriptor, path, earlier)
    return "copied"
