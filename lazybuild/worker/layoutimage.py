"""An image of an OCI layout directory, as a base image (``--build-context
NAME=oci-layout://DIR[:TAG][@sha256:...]``, buildx's syntax: ``FROM NAME``,
``COPY --from=NAME``).

The index, the manifest and the config are read as blobs of the layout and checked
against their digests (``OciLayout.read_blob``); a ``@DIGEST`` names the manifest or
index to use, else ``:TAG`` (or the layout's only image, or ``latest``) picks an entry
of ``index.json``, and an index gives the host platform's manifest. The layers stay in
the layout: their source is ``oci-layout:DIR@DIGEST`` (``oci.localblob``), which the
lazy filesystem reads as it reads a registry's blobs, every chunk checked against the
TOC the manifest's descriptor names. So the layers must be eStargz with a TOC digest
(what lazybuild writes); others are refused when the image is resolved.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from lazybuild.errors import FormatError, LazybuildError, NotFoundError
from lazybuild.lazyfs.unpack import is_lazy_layer
from lazybuild.oci.layout import OciLayout
from lazybuild.oci.localblob import layout_source
from lazybuild.oci.manifest import Index, Manifest, load_config, parse_document
from lazybuild.oci.platform import Platform
from lazybuild.registry.client import MAX_CONFIG_SIZE, MAX_MANIFEST_SIZE, ResolvedImage
from lazybuild.registry.reference import Reference

__all__ = ["OCI_LAYOUT_SCHEME", "LayoutImage", "LayoutImageError", "resolve_layout_image"]

OCI_LAYOUT_SCHEME = "oci-layout://"


class LayoutImageError(LazybuildError):
    """An OCI layout's image that cannot be a base image (missing, malformed, not lazy)."""


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
            if not is_lazy_layer(layer):
                raise LayoutImageError(
                    f"{name}: layer {layer.digest} ({layer.media_type}) is not eStargz with a "
                    "TOC digest: a layout's layers are only mounted lazily (make one with "
                    "lazybuild convert oci:DIR oci:NEWDIR)"
                )
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
