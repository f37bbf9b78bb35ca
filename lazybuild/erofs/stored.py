"""An ``ErofsLayout`` put back together from parts kept of an earlier build; no I/O.

``build_layout`` places and encodes every inode in Python, which for a layer of tens
of thousands of files takes most of a second. Its output for a TOC never changes, so
a caller may keep ``LayoutParts`` (the metadata, ``data_start``, the stats, and the
path and size of each file of the data region, in image order) and have the layout
again from them and the layer's index: each file's extent starts at the block after
the previous one's end, from ``data_start``, exactly as ``build_layout`` places them,
and the superblock inside the metadata gives the rest.

The parts come from outside (a cache file), so ``restore_layout`` refuses parts that
do not fit: metadata that is not block-aligned ``data_start`` bytes with an EROFS
superblock (magic and checksum), a UUID not derived from the TOC digest, a path that
is not a regular file of the index with that size, a file named twice, a block count
other than the superblock's. What these checks cannot see, the inodes' contents, is
for the caller to vouch for (by a digest of what it stored).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from lazybuild.erofs import ondisk
from lazybuild.erofs.extents import Extent, ExtentTable
from lazybuild.erofs.layout import ErofsLayout, LayoutStats, image_uuid
from lazybuild.errors import FormatError
from lazybuild.estargz.gcpause import collector_paused
from lazybuild.estargz.index import LayerIndex, Node

BLOCK_SIZE = ondisk.BLOCK_SIZE


class StoredLayoutError(FormatError):
    """Stored parts that are not a layout of this index and TOC digest."""


@dataclass(frozen=True)
class LayoutParts:
    """What ``restore_layout`` needs of a built layout, besides the index."""

    metadata: bytes
    data_start: int
    stats: LayoutStats
    files: tuple[tuple[str, int], ...]  # (path in the index, size) per extent, in order


def layout_parts(layout: ErofsLayout, index: LayerIndex) -> LayoutParts | None:
    """The parts of ``layout`` (built from ``index``) to keep; None when a file's path
    does not lead back to its node in ``index``, so the parts could not be restored."""
    files = []
    for extent in layout.extents.extents:
        if index.lookup(extent.node.name) is not extent.node:
            return None
        files.append((extent.node.name, extent.size))
    return LayoutParts(layout.metadata, layout.data_start, layout.stats, tuple(files))


def restore_layout(index: LayerIndex, toc_digest: str, parts: LayoutParts) -> ErofsLayout:
    """The layout ``build_layout(index, toc_digest)`` made when it gave ``parts``.
    Raises ``StoredLayoutError`` for parts that do not fit ``index`` and the digest."""
    metadata, data_start = parts.metadata, parts.data_start
    if data_start <= 0 or data_start % BLOCK_SIZE or len(metadata) != data_start:
        raise StoredLayoutError(
            f"{len(metadata)} bytes of metadata for a data region at {data_start}"
        )
    superblock = ondisk.unpack_superblock(metadata)  # block 0 is there: checked above
    if superblock.magic != ondisk.MAGIC:
        raise StoredLayoutError("no EROFS superblock")
    if superblock.checksum != ondisk.superblock_checksum(metadata):
        raise StoredLayoutError("the superblock checksum does not match")
    if superblock.uuid != image_uuid(toc_digest, b""):
        raise StoredLayoutError(f"the image is not of TOC {toc_digest}")
    if superblock.inodes != parts.stats.inodes or len(parts.files) != parts.stats.files_with_data:
        raise StoredLayoutError("the stats do not match the image")
    with collector_paused():
        extents = _extents(index, data_start, parts.files)
        table = ExtentTable(extents)
    end = extents[-1].offset + ondisk.blocks_for(extents[-1].size) * BLOCK_SIZE if extents else 0
    image_size = max(data_start, end)
    if image_size != superblock.blocks * BLOCK_SIZE:
        raise StoredLayoutError(
            f"the files end at {image_size}, the superblock at {superblock.blocks} blocks"
        )
    return ErofsLayout(
        metadata=metadata,
        data_start=data_start,
        image_size=image_size,
        extents=table,
        build_time=superblock.build_time,
        uuid=superblock.uuid,
        root_nid=superblock.root_nid,
        stats=parts.stats,
    )


def _extents(index: LayerIndex, data_start: int, files: Sequence[tuple[str, int]]) -> list[Extent]:
    extents = []
    seen: set[Node] = set()
    offset = data_start
    for path, size in files:
        node = index.lookup(path)
        if node is None or node.type != "reg" or node.size != size or size <= 0:
            raise StoredLayoutError(f"{path!r} is not a file of {size} bytes in the layer")
        if node in seen:
            raise StoredLayoutError(f"{path!r} is stored twice")
        seen.add(node)
        extents.append(Extent(offset, size, node))
        offset += ondisk.blocks_for(size) * BLOCK_SIZE
    return extents
