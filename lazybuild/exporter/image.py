"""The image a build made, as OCI documents: config JSON and manifest, no I/O.

The config is the frontend's ``to_oci_config()`` (``config``, ``history``, ``author``)
completed with what only the exporter knows: the platform, ``rootfs.diff_ids`` of the
layers as exported, and ``created`` (SOURCE_DATE_EPOCH when given, so builds are
reproducible; otherwise now), which history entries without a time of their own get
too. Keys are written in the OCI spec's struct order and encoded compactly, so the
same inputs always give the same digest.

History must agree with the layers: Docker, containerd and registries' UIs pair the
n-th non-empty history entry with the n-th layer. When the given history does not
(a frontend bug or a base image with a broken config), it is not patched up entry by
entry, which would silently pair commands with the wrong layers: the base image's
history is kept as far as it is consistent, every layer above it gets a generic entry,
and a warning says so.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

from lazybuild.oci import mediatypes
from lazybuild.oci.descriptor import Descriptor, descriptor_for
from lazybuild.oci.manifest import Manifest, encode_json
from lazybuild.oci.platform import Platform

__all__ = [
    "AssembledImage",
    "ExportedLayer",
    "assemble_image",
    "consistent_history",
    "created_timestamp",
    "oci_layer_descriptor",
]

log = logging.getLogger(__name__)

GENERIC_HISTORY_COMMENT = "lazybuild.exporter.v0"
# Docker media types → the OCI types for the same bytes (an OCI manifest lists OCI types).
_OCI_LAYER_TYPES = {
    mediatypes.DOCKER_LAYER_GZIP: mediatypes.OCI_LAYER_GZIP,
    mediatypes.DOCKER_LAYER_TAR: mediatypes.OCI_LAYER_TAR,
    mediatypes.DOCKER_LAYER_FOREIGN_GZIP: mediatypes.OCI_LAYER_NONDIST_GZIP,
}
# Keys of the frontend's dict that the exporter writes itself.
_OWN_KEYS = {"created", "architecture", "os", "os.version", "variant", "rootfs"}


@dataclass(frozen=True)
class ExportedLayer:
    """A layer as the manifest lists it, with the digest of its uncompressed tar."""

    descriptor: Descriptor
    diff_id: str


@dataclass(frozen=True)
class AssembledImage:
    config: dict[str, Any]
    config_bytes: bytes
    config_descriptor: Descriptor
    manifest_bytes: bytes
    manifest_descriptor: Descriptor
    layers: tuple[ExportedLayer, ...]
    warnings: tuple[str, ...] = ()

    @property
    def image_id(self) -> str:
        """Docker's image id: the config digest."""
        return self.config_descriptor.digest


def created_timestamp(source_date_epoch: int | None, now: datetime | None = None) -> str:
    """RFC 3339 in UTC: whole seconds for an epoch (as BuildKit writes it), else now."""
    if source_date_epoch is not None:
        moment = datetime.fromtimestamp(source_date_epoch, UTC)
        return moment.strftime("%Y-%m-%dT%H:%M:%SZ")
    moment = (now or datetime.now(UTC)).astimezone(UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def oci_layer_descriptor(descriptor: Descriptor) -> Descriptor:
    """The descriptor as an OCI manifest lists it: OCI media type, no platform."""
    media_type = _OCI_LAYER_TYPES.get(descriptor.media_type, descriptor.media_type)
    return replace(descriptor, media_type=media_type, platform=None)


def consistent_history(
    history: Sequence[Mapping[str, Any]],
    *,
    layer_count: int,
    base_layer_count: int,
    created: str,
) -> tuple[list[dict[str, Any]], str | None]:
    """History whose non-empty entries match the layers one to one, each entry with a
    ``created``; and a warning when the given history had to be replaced."""
    entries = [dict(entry) for entry in history]
    warning = None
    given = sum(1 for entry in entries if not entry.get("empty_layer"))
    if given != layer_count:
        warning = (
            f"image history lists {given} layers but the image has {layer_count}; "
            f"keeping the base image's history and describing the "
            f"{layer_count - min(base_layer_count, layer_count)} layers above it generically"
        )
        entries = _base_prefix(entries, base_layer_count)
        kept = sum(1 for entry in entries if not entry.get("empty_layer"))
        entries += [
            {
                "created_by": f"lazybuild build: layer {number}",
                "comment": GENERIC_HISTORY_COMMENT,
            }
            for number in range(kept + 1, layer_count + 1)
        ]
    for entry in entries:
        entry.setdefault("created", created)
    return [_history_entry_in_order(entry) for entry in entries], warning


def _base_prefix(entries: list[dict[str, Any]], base_layer_count: int) -> list[dict[str, Any]]:
    """The entries up to the one for the last base layer; none if they do not reach it."""
    if base_layer_count == 0:
        return []
    seen = 0
    for position, entry in enumerate(entries):
        if not entry.get("empty_layer"):
            seen += 1
            if seen == base_layer_count:
                return entries[: position + 1]
    return []


def _history_entry_in_order(entry: dict[str, Any]) -> dict[str, Any]:
    # The OCI spec's field order; anything unknown goes last, as it came.
    order = ("created", "created_by", "author", "comment", "empty_layer")
    ordered = {key: entry[key] for key in order if key in entry}
    ordered.update({key: value for key, value in entry.items() if key not in ordered})
    return ordered


def assemble_image(
    oci_config: Mapping[str, Any],
    layers: Sequence[ExportedLayer],
    *,
    base_layer_count: int,
    platform: Platform,
    source_date_epoch: int | None,
    now: datetime | None = None,
    annotations: Mapping[str, str] | None = None,
) -> AssembledImage:
    """Config and manifest for ``layers`` (bottom first); ``oci_config`` is what
    ``ImageConfigState.to_oci_config()`` returns; the bottom ``base_layer_count`` layers
    are the base image's. ``annotations`` (``--annotation``) go on the manifest: they
    change its digest, never the config's (the image id)."""
    created = created_timestamp(source_date_epoch, now)
    history, warning = consistent_history(
        list(oci_config.get("history") or ()),
        layer_count=len(layers),
        base_layer_count=base_layer_count,
        created=created,
    )
    if warning is not None:
        log.warning("%s", warning)
    config: dict[str, Any] = {"created": created}
    if oci_config.get("author"):
        config["author"] = oci_config["author"]
    config["architecture"] = platform.architecture
    config["os"] = platform.os
    if platform.os_version:
        config["os.version"] = platform.os_version
    if platform.variant:
        config["variant"] = platform.variant
    config["config"] = dict(oci_config.get("config") or {})
    config["rootfs"] = {"type": "layers", "diff_ids": [layer.diff_id for layer in layers]}
    config["history"] = history
    for key, value in oci_config.items():
        if key not in config and key not in _OWN_KEYS:
            config[key] = value
    config_bytes = encode_json(config)
    config_descriptor = descriptor_for(mediatypes.OCI_CONFIG, config_bytes)
    manifest = Manifest(
        mediatypes.OCI_MANIFEST,
        config_descriptor,
        tuple(oci_layer_descriptor(layer.descriptor) for layer in layers),
        annotations=dict(annotations or {}),
    )
    manifest_bytes = manifest.encode()
    return AssembledImage(
        config=config,
        config_bytes=config_bytes,
        config_descriptor=config_descriptor,
        manifest_bytes=manifest_bytes,
        manifest_descriptor=descriptor_for(mediatypes.OCI_MANIFEST, manifest_bytes),
        layers=tuple(layers),
        warnings=(warning,) if warning else (),
    )
