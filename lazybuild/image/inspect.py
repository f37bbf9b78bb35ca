"""Facts about an image: its manifests, platforms and, per layer, format and TOC figures."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import trio

from lazybuild.image.layerprobe import LayerProbe, probe_layer
from lazybuild.image.store import ImageSource
from lazybuild.oci.descriptor import Descriptor
from lazybuild.oci.manifest import Manifest, parse_document
from lazybuild.progress.lines import human_size, short_digest


@dataclass(frozen=True)
class ManifestReport:
    descriptor: Descriptor
    manifest: Manifest
    layers: tuple[LayerProbe, ...]


@dataclass(frozen=True)
class ImageReport:
    source: str
    root: Descriptor
    manifests: tuple[ManifestReport, ...]

    def to_json(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "digest": self.root.digest,
            "mediaType": self.root.media_type,
            "manifests": [_manifest_json(m) for m in self.manifests],
        }

    def to_text(self) -> str:
        lines = [
            f"{self.source}",
            f"  digest     {self.root.digest}",
            f"  mediaType  {self.root.media_type}",
        ]
        for report in self.manifests:
            platform = report.descriptor.platform
            lines.append(
                f"  manifest   {report.descriptor.digest}"
                + (f"  platform {platform}" if platform else "")
            )
            for number, probe in enumerate(report.layers, 1):
                lines.append(_layer_line(number, probe))
        return "\n".join(lines)


async def inspect_image(source: ImageSource) -> ImageReport:
    root = await source.root()
    if isinstance(root.document, Manifest):
        manifests = [await _inspect_manifest(source, root.descriptor, root.document)]
    else:
        manifests = []
        for entry in root.document.manifests:
            if "vnd.docker.reference.type" in entry.annotations:
                # An attestation or workload record about another entry, not an image.
                continue
            data = await source.fetch(entry)
            document = parse_document(
                data, entry.media_type, f"{source.description} {entry.digest}"
            )
            if isinstance(document, Manifest):
                manifests.append(await _inspect_manifest(source, entry, document))
    return ImageReport(source.description, root.descriptor, tuple(manifests))


async def _inspect_manifest(
    source: ImageSource, descriptor: Descriptor, manifest: Manifest
) -> ManifestReport:
    probes: list[LayerProbe | None] = [None] * len(manifest.layers)

    async def probe(position: int) -> None:
        where = f"{source.description} layer {position + 1}"
        probes[position] = await probe_layer(source, manifest.layers[position], where)

    async with trio.open_nursery() as nursery:
        for position in range(len(manifest.layers)):
            nursery.start_soon(probe, position)
    return ManifestReport(descriptor, manifest, tuple(p for p in probes if p is not None))


def _layer_json(probe: LayerProbe) -> dict[str, Any]:
    out: dict[str, Any] = {
        "digest": probe.descriptor.digest,
        "mediaType": probe.descriptor.media_type,
        "size": probe.descriptor.size,
        "format": probe.format.value,
        "annotations": dict(probe.descriptor.annotations),
    }
    if probe.opened is not None:
        stats = probe.opened.index.stats
        out["toc"] = {
            "digest": probe.opened.toc_digest,
            "offset": probe.opened.toc_offset,
            "entries": stats.entries,
            "files": stats.files,
            "chunks": stats.chunks,
            "prioritizedFiles": stats.prioritized_files,
            "landmark": stats.landmark,
            "prefetchBytes": probe.opened.index.prefetch_landmark_offset,
        }
    return out


def _manifest_json(report: ManifestReport) -> dict[str, Any]:
    platform = report.descriptor.platform
    return {
        "digest": report.descriptor.digest,
        "mediaType": report.descriptor.media_type,
        "platform": platform.to_json() if platform else None,
        "config": report.manifest.config.to_json(),
        "layers": [_layer_json(p) for p in report.layers],
    }


def _layer_line(number: int, probe: LayerProbe) -> str:
    text = (
        f"    layer {number:<3} {short_digest(probe.descriptor.digest)}  "
        f"{human_size(probe.descriptor.size):>9}  {probe.format.value}"
    )
    if probe.opened is not None:
        stats = probe.opened.index.stats
        text += (
            f"  entries={stats.entries} files={stats.files} chunks={stats.chunks}"
            f" prioritized={stats.prioritized_files} landmark={stats.landmark or 'none'}"
        )
    return text
