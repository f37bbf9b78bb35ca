"""Find out what a layer blob is (eStargz, legacy stargz, gzip, zstd, tar) from its ends.

Only the head and the tail of the blob are read (plus the TOC for stargz layers), so
probing a remote layer costs two or three small range requests, never the blob.
"""

from __future__ import annotations

from dataclasses import dataclass

from lazybuild.errors import FormatError
from lazybuild.estargz.layerformat import LayerFormat, detect_format
from lazybuild.estargz.reader import (
    OpenedLayer,
    parse_layer,
    read_toc_region,
    tail_read_range,
)
from lazybuild.image.store import ImageSource
from lazybuild.oci import mediatypes
from lazybuild.oci.descriptor import Descriptor

_HEAD_SIZE = 512


@dataclass(frozen=True)
class LayerProbe:
    descriptor: Descriptor
    format: LayerFormat
    opened: OpenedLayer | None  # the verified TOC of an eStargz or legacy stargz layer


async def probe_layer(source: ImageSource, descriptor: Descriptor, where: str) -> LayerProbe:
    if not mediatypes.is_layer(descriptor.media_type):
        raise FormatError(f"{where}: unknown layer media type {descriptor.media_type!r}")
    if descriptor.size == 0:
        raise FormatError(f"{where}: layer {descriptor.digest} is empty (size 0)")
    head = await source.read_range(descriptor, 0, min(_HEAD_SIZE, descriptor.size))
    tail_start, tail_length = tail_read_range(descriptor.size)
    tail = await source.read_range(descriptor, tail_start, tail_length)
    try:
        layer_format = detect_format(descriptor.media_type, head, tail)
    except FormatError as exc:
        raise FormatError(f"{where}: {exc}") from None
    expected = descriptor.annotations.get(mediatypes.TOC_DIGEST_ANNOTATION)
    if layer_format not in (LayerFormat.ESTARGZ, LayerFormat.LEGACY_STARGZ):
        if expected is not None and layer_format is not LayerFormat.ZSTD_CHUNKED:
            # The annotation promises eStargz; a blob without its footer is damaged,
            # and treating it as plain gzip would hide that.
            raise FormatError(
                f"{where}: annotated with a TOC digest but has no valid eStargz footer"
            )
        return LayerProbe(descriptor, layer_format, None)

    async def read_at(offset: int, length: int) -> bytes:
        return await source.read_range(descriptor, offset, length)

    region, region_start = await read_toc_region(read_at, descriptor.size, tail=tail, where=where)
    opened = parse_layer(region, region_start, descriptor.size, expected, where=where)
    return LayerProbe(descriptor, layer_format, opened)
