"""An image of an OCI layout directory, as a base image (``--build-context
NAME=oci-layout://DIR[:TAG][@sha256:...]``, buildx's syntax: ``FROM NAME``,
``COPY --from=NAME``).

The index, the manifest and the config are read as blobs of the layout and checked
against their digests (``OciLayout.read_blob``); a ``@DIGEST`` names the manifest or
index to use, else ``:TAG`` (or the layout's only image, or ``latest``) picks an entry
of ``index.json``, and an index gives the host platform's manifest. The layers stay in
the layout: their source is ``oci-layout:DIR@DIGEST`` (``oci.localblob``), which the
filesystem process opens as it opens a registry's layers. eStargz layers with a TOC
digest (what lazybuild writes) are mounted lazily, every chunk checked against the TOC
the manifest's descriptor names; other layers (gzip, zstd or uncompressed tars, what
``docker buildx build -o type=oci`` writes) are read whole, hashed as they are read,
unpacked and kept by digest as a registry's non-eStargz layers are
(``lazyfs.unpack.unpack_blob_file``). Here only each layer's size is checked.

A step's key is the manifest's digest, not the directory, so a cache hit's layers are
opened from the layout this build gave for that manifest (``rehome_layout_layers``).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path

from lazybuild.errors import FormatError, LazybuildError, NotFoundError
from lazybuild.oci.layout import OciLayout
from lazybuild.oci.localblob import layout_of, layout_source
from lazybuild.oci.manifest import Index, Manifest, load_config, parse_document
from lazybuild.oci.platform import Platform
from lazybuild.registry.client import MAX_CONFIG_SIZE, MAX_MANIFEST_SIZE, ResolvedImage
from lazybuild.registry.reference import Reference
from lazybuild.worker.layers import Layer, RemoteLayer, Snapshot

__all__ = [
    "OCI_LAYOUT_SCHEME",
    "LayoutImage",
    "LayoutImageError",
    "rehome_layout_layers",
    "resolve_layout_image",
]

OCI_LAYOUT_SCHEME = "oci-layout://"


class LayoutImageError(LazybuildError):
    """An OCI layout's image that cannot be a base image (missing or malformed)."""


@dataclass(frozen=True)
class LayoutImage(ResolvedImage):
    """A ``ResolvedImage`` whose layers are blobs of a layout: ``source`` is what the
    lazy filesystem opens them by (``oci-layout:DIR@DIGEST``)."""

    source: str = ""


def resolve_layout_image(ref: str, platform: Platform) -> LayoutImage:
    """(worker thread) The image ``oci-layout://DIR[:TAG][@DIGEST]`` names, verified."""
    from lazybuild.context.sources import parse_oci_layout

    wanted = parse_oci_layout(ref)
    name = str(wanted)
    try:
        layout = OciLayout.open(wanted.directory)
        if wanted.digest is not None:
            digest, size, media_type = wanted.digest, _blob_size(layout, wanted.digest), ""
        else:
            entry = layout.resolve(wanted.tag)
            digest, size, media_type = entry.digest, entry.size, entry.media_type
        _bounded(name, digest, size, MAX_MANIFEST_SIZE)
        data = layout.read_blob(digest, size)
        document = parse_document(data, media_type, f"{digest} of {name}")
        if isinstance(document, Index):
            chosen = document.select(platform, name)
            digest = chosen.digest
            _bounded(name, digest, chosen.size, MAX_MANIFEST_SIZE)
            data = layout.read_blob(digest, chosen.size)
            document = parse_document(data, chosen.media_type, f"{digest} of {name}")
        if not isinstance(document, Manifest):
            raise LayoutImageError(f"{name}: {digest} is a nested index")
        manifest = document
        _bounded(name, manifest.config.digest, manifest.config.size, MAX_CONFIG_SIZE)
        config_bytes = layout.read_blob(manifest.config.digest, manifest.config.size)
        config = load_config(config_bytes, f"config {manifest.config.digest} of {name}")
        for layer in manifest.layers:
            actual = _blob_size(layout, layer.digest)
            if actual != layer.size:
                raise LayoutImageError(
                    f"{name}: layer {layer.digest} is {actual} bytes, its descriptor says "
                    f"{layer.size}"
                )
    except (FormatError, NotFoundError) as error:
        raise LayoutImageError(f"{name}: {error}") from None
    return LayoutImage(
        # Not a registry's: a name for messages, pinned to the manifest it resolved to.
        ref=Reference("oci-layout", _repository(wanted.directory), None, digest),
        index=None,
        manifest_digest=digest,
        manifest=manifest,
        manifest_bytes=data,
        config=config,
        config_bytes=config_bytes,
        source=layout_source(wanted.directory, digest),
    )


def rehome_layout_layers(snapshot: Snapshot, sources: Mapping[str, str]) -> Snapshot:
    """A cached snapshot whose base layers came from an OCI layout, as this build opens
    them: a record names the layout directory of the build that made it (through the
    daemon, a copy since removed; locally, a directory since changed or gone, or
    another layout of the same image), but the step's key is the manifest's digest, so
    the layers of manifest M come from the layout this build resolved M from
    (``sources``: manifest digest -> layer source)."""
    if not sources:
        return snapshot
    layers: list[Layer] = []
    for layer in snapshot.layers:
        if (
            isinstance(layer, RemoteLayer)
            and not layer.from_cache
            and layout_of(layer.source) is not None
        ):
            current = sources.get(layer.source.rpartition("@")[2], layer.source)
            layers.append(replace(layer, source=current))
        else:
            layers.append(layer)
    return Snapshot(tuple(layers))


def _blob_size(layout: OciLayout, digest: str) -> int:
    try:
        return layout.blob_path(digest).stat().st_size
    except FileNotFoundError:
        raise NotFoundError(f"blob {digest} is missing") from None


def _bounded(name: str, digest: str, size: int, limit: int) -> None:
    if size > limit:
        raise LayoutImageError(f"{name}: {digest} is {size} bytes, more than {limit}")


def _repository(directory: Path) -> str:
    return re.sub(r"[^a-z0-9._/-]+", "-", str(directory).lower()).strip("/-") or "layout"
