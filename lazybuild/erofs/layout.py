"""Placing a presented layer in an EROFS image and encoding its metadata.

Image layout (4 KiB blocks)::

    block 0:  zeros (1 KiB) | superblock (128 B) | inodes from nid 36, root first ...
    ...       inodes (each with its inline xattrs and inline tail), breadth first
    then      directory blocks that are not inline, symlink targets that are not inline
    data_start: one block-aligned range per regular file with data, in blob order

Per inode: compact (32 B) when its uid, gid, nlink and size fit 16/16/16/32 bits and its
mtime is the image's build time (the layer's most common mtime); otherwise extended
(64 B) with its own mtime. Compact inodes write ``i_mtime`` 0, which every kernel
reads as the build time. Directories and symlinks are FLAT_INLINE when their tail fits
in the inode's block, else FLAT_PLAIN in the metadata area; regular files FLAT_PLAIN.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from dataclasses import dataclass
from operator import itemgetter

from lazybuild.erofs import ondisk
from lazybuild.erofs.extents import Extent, ExtentTable, Piece
from lazybuild.erofs.tree import (
    FILE_TYPE_BY_TYPE,
    ImageInode,
    UnrepresentableError,
    present,
    release,
)
from lazybuild.estargz.gcpause import collector_paused
from lazybuild.estargz.index import LayerIndex

BLOCK_SIZE = ondisk.BLOCK_SIZE
NULL_IF_INLINE = ondisk.NULL_BLOCK  # i_u of an inline inode with no full blocks, as mkfs
_U16 = 0xFFFF
_U32 = 0xFFFFFFFF
_U64 = (1 << 64) - 1
_UUID_CONTEXT = b"lazybuild erofs image of TOC "


@dataclass(frozen=True)
class LayoutStats:
    inodes: int
    compact_inodes: int
    extended_inodes: int
    directories: int
    directory_blocks: int  # directory blocks outside inodes (not inline tails)
    inline_symlinks: int
    files_with_data: int


@dataclass(frozen=True, eq=False)
class ErofsLayout:
    """An EROFS image of one layer, as metadata bytes plus an extent table.

    The image is ``image_size`` bytes: ``metadata`` is bytes ``[0, data_start)``; the
    rest is the data region, where ``extents`` says which file's bytes are where and
    everything else is zeros. ``read`` assembles any range given the file pieces.
    """

    metadata: bytes
    data_start: int
    image_size: int
    extents: ExtentTable
    build_time: int
    uuid: bytes
    root_nid: int
    stats: LayoutStats

    def extents_at(self, offset: int, length: int) -> list[Piece]:
        """The file data within image bytes ``[offset, offset + length)`` (clipped to the
        image), in order. Bytes below ``data_start`` are ``metadata``; bytes above it
        that no piece covers are zeros."""
        start = max(offset, self.data_start)
        stop = min(offset + length, self.image_size)
        return self.extents.pieces(start, stop - start) if start < stop else []

    def read(self, offset: int, length: int, pieces: list[tuple[Piece, bytes]]) -> bytes:
        """Image bytes ``[offset, offset + length)`` (short at the image's end), given
        the bytes of every piece ``extents_at(offset, length)`` named."""
        if offset < 0 or length < 0:
            raise ValueError(f"bad read [{offset}, +{length})")
        stop = min(offset + length, self.image_size)
        if offset >= stop:
            return b""
        if stop <= self.data_start:
            return self.metadata[offset:stop]
        out = bytearray(stop - offset)
        if offset < self.data_start:
            out[: self.data_start - offset] = self.metadata[offset:]
        for piece, data in pieces:
            if len(data) != piece.length:
                raise ValueError(
                    f"{len(data)} bytes for a piece of {piece.length} of {piece.node.name!r}"
                )
            at = piece.image_offset - offset
            if at < 0 or at + piece.length > len(out):
                raise ValueError(f"piece at {piece.image_offset} outside the read")
            out[at : at + piece.length] = data
        return bytes(out)


@dataclass(eq=False, slots=True)
class _Placed:
    inode: ImageInode
    extended: bool
    xattrs: bytes
    core_size: int  # the inode's own record: compact or extended
    layout: int = ondisk.LAYOUT_FLAT_PLAIN
    nid: int = 0
    raw_block: int = 0
    # directories: the entries of each block, as (name, inode) lists
    blocks: list[list[tuple[bytes, ImageInode]]] | None = None


def _build_time(inodes: list[ImageInode]) -> int:
    """The most common mtime (the smallest of equals), so most inodes can be compact."""
    counts = Counter(i.mtime for i in inodes if 0 <= i.mtime <= _U64)
    if not counts:
        return 0
    best = max(counts.values())
    return min(t for t, n in counts.items() if n == best)


def _directory_blocks(
    directory: ImageInode,
) -> tuple[list[list[tuple[bytes, ImageInode]]], int]:
    """The directory's entries (``.`` and ``..`` included, sorted by bytes) cut into
    blocks as mkfs cuts them, and its ``i_size`` (not rounded up)."""
    parent = directory.parent or directory
    # The entries are sorted already: sorting again with the two dots is linear.
    entries = sorted([(b".", directory), (b"..", parent), *directory.entries], key=itemgetter(0))
    block: list[tuple[bytes, ImageInode]] = []
    blocks = [block]
    used = 0
    for entry in entries:
        need = ondisk.DIRENT_SIZE + len(entry[0])
        if used + need > BLOCK_SIZE:
            block = []
            blocks.append(block)
            used = 0
        block.append(entry)
        used += need
    return blocks, (len(blocks) - 1) * BLOCK_SIZE + used


def _tail_size(placed: _Placed) -> int:
    """Bytes an inline tail would take (0: this inode has none to place)."""
    inode = placed.inode
    if inode.type == "symlink":
        return len(inode.target)
    if inode.type == "dir":
        tail = inode.size - (len(placed.blocks or ()) - 1) * BLOCK_SIZE
        return tail if tail < BLOCK_SIZE else 0
    return 0


def _place_inodes(placed: list[_Placed]) -> int:
    """Give every inode its nid (root first); returns the end of the inode area."""
    slot = ondisk.INODE_SLOT
    position = ondisk.FIRST_INODE_OFFSET
    for item in placed:
        core_size = item.core_size
        record = core_size + len(item.xattrs)
        kind = item.inode.type
        tail = _tail_size(item) if kind in {"dir", "symlink"} else 0
        inline = tail > 0 and record + tail <= BLOCK_SIZE
        if inline:
            record += tail
            item.layout = ondisk.LAYOUT_FLAT_INLINE
        # An inline tail must not cross a block; keep the inode core in one block too.
        keep = record if inline else core_size
        if position % BLOCK_SIZE + keep > BLOCK_SIZE:
            position = ondisk.align(position, BLOCK_SIZE)
        item.nid = position // slot
        position = -(-(position + record) // slot) * slot
    return position


def image_uuid(toc_digest: str | None, metadata: bytes) -> bytes:
    """The superblock's UUID: derived from the TOC digest, else from the metadata (hashed
    with a zero UUID in its place)."""
    seed = toc_digest.encode("ascii") if toc_digest else hashlib.sha256(metadata).digest()
    return hashlib.sha256(_UUID_CONTEXT + seed).digest()[:16]


def _data_order(inodes: list[ImageInode]) -> list[ImageInode]:
    """Regular files with data in the order of their bytes in the blob: the TOC's order,
    prioritized files first (a hardlinked file once, where it first appears)."""
    files = [i for i in inodes if i.type == "reg" and i.size > 0]
    # Small files can share a gzip member (innerOffset): their order inside it counts too.
    return sorted(files, key=lambda i: (i.node.chunks[0].offset, i.node.chunks[0].inner_offset))


def build_layout(index: LayerIndex, toc_digest: str | None = None) -> ErofsLayout:
    """The EROFS image of ``index`` (a verified TOC's view). The same TOC always gives
    the same bytes; ``toc_digest`` seeds the superblock's UUID (without it, the
    metadata's own hash does). Raises ``UnrepresentableError`` for a layer an EROFS
    image cannot hold."""
    with collector_paused():
        inodes = present(index)
        try:
            return _build_layout(inodes, toc_digest)
        finally:
            release(inodes)


def _build_layout(inodes: list[ImageInode], toc_digest: str | None) -> ErofsLayout:
    build_time = _build_time(inodes)
    placed: list[_Placed] = []
    by_inode: dict[ImageInode, _Placed] = {}
    for inode in inodes:
        body = b""
        if inode.xattrs:
            body = ondisk.xattr_body(inode.xattrs)
            if ondisk.xattr_icount(len(body)) > ondisk.MAX_XATTR_ICOUNT:
                raise UnrepresentableError(f"{inode.node.name!r}: xattrs take {len(body)} bytes")
        blocks = None
        if inode.type == "dir":
            blocks, inode.size = _directory_blocks(inode)
        extended = (
            inode.uid > _U16
            or inode.gid > _U16
            or inode.nlink > _U16
            or inode.size > _U32
            or inode.mtime != build_time
        )
        core_size = ondisk.EXTENDED_INODE_SIZE if extended else ondisk.COMPACT_INODE_SIZE
        item = _Placed(inode, extended, body, core_size, blocks=blocks)
        placed.append(item)
        by_inode[inode] = item

    inode_end = _place_inodes(placed)
    if placed[0].nid > ondisk.MAX_ROOT_NID:
        raise UnrepresentableError("the root inode does not fit in block 0")
    next_block = ondisk.blocks_for(inode_end)
    directory_blocks = 0
    for item in placed:
        inline = item.layout == ondisk.LAYOUT_FLAT_INLINE
        if item.inode.type == "dir":
            assert item.blocks is not None
            outside = len(item.blocks) - (1 if inline else 0)
            item.raw_block = next_block if outside else ondisk.NULL_BLOCK
            next_block += outside
            directory_blocks += outside
        elif item.inode.type == "symlink":
            item.raw_block = NULL_IF_INLINE if inline else next_block
            next_block += 0 if inline else 1
    data_start = next_block * BLOCK_SIZE
    extents = []
    for inode in _data_order(inodes):
        item = by_inode[inode]
        item.raw_block = next_block
        extents.append(Extent(next_block * BLOCK_SIZE, inode.size, inode.node))
        next_block += ondisk.blocks_for(inode.size)
        if next_block > ondisk.MAX_BLOCKS:
            raise UnrepresentableError("the image would be over 2^32 blocks (16 TiB)")

    metadata = bytearray(data_start)
    nids = {inode: item.nid for inode, item in by_inode.items()}
    for sequence, item in enumerate(placed, start=1):
        _encode_inode(metadata, item, sequence, nids)
    feature_compat = ondisk.COMPAT_MTIME | ondisk.COMPAT_SB_CHKSUM
    superblock = {
        "feature_compat": feature_compat,
        "root_nid": placed[0].nid,
        "inodes": len(placed),
        "build_time": build_time,
        "blocks": next_block,
    }
    if toc_digest:
        uuid = image_uuid(toc_digest, b"")
    else:
        ondisk.pack_superblock(metadata, uuid=bytes(16), **superblock)
        uuid = image_uuid(None, bytes(metadata))
    ondisk.pack_superblock(metadata, uuid=uuid, **superblock)
    ondisk.set_superblock_checksum(metadata)  # last: it covers the inodes in block 0
    extended_inodes = sum(1 for p in placed if p.extended)
    stats = LayoutStats(
        inodes=len(placed),
        compact_inodes=len(placed) - extended_inodes,
        extended_inodes=extended_inodes,
        directories=sum(1 for i in inodes if i.type == "dir"),
        directory_blocks=directory_blocks,
        inline_symlinks=sum(
            1 for p in placed if p.inode.type == "symlink" and p.layout == ondisk.LAYOUT_FLAT_INLINE
        ),
        files_with_data=len(extents),
    )
    return ErofsLayout(
        metadata=bytes(metadata),
        data_start=data_start,
        image_size=next_block * BLOCK_SIZE,
        extents=ExtentTable(extents),
        build_time=build_time,
        uuid=uuid,
        root_nid=placed[0].nid,
        stats=stats,
    )


def _encode_inode(
    metadata: bytearray, item: _Placed, sequence: int, nids: dict[ImageInode, int]
) -> None:
    inode = item.inode
    kind = inode.type
    offset = item.nid * ondisk.INODE_SLOT
    if kind in {"char", "block"}:
        i_u = inode.rdev
    elif kind in {"reg", "fifo"} and inode.size == 0:
        i_u = 0
    else:
        i_u = item.raw_block
    xattrs = item.xattrs
    if item.extended:
        ondisk.pack_extended_inode(
            metadata,
            offset,
            layout=item.layout,
            xattr_icount=ondisk.xattr_icount(len(xattrs)),
            mode=inode.mode,
            nlink=inode.nlink,
            size=inode.size,
            i_u=i_u,
            ino=sequence & 0xFFFFFFFF,
            uid=inode.uid,
            gid=inode.gid,
            mtime=inode.mtime,
        )
    else:
        ondisk.pack_compact_inode(
            metadata,
            offset,
            layout=item.layout,
            xattr_icount=ondisk.xattr_icount(len(xattrs)),
            mode=inode.mode,
            nlink=inode.nlink,
            size=inode.size,
            i_u=i_u,
            ino=sequence & 0xFFFFFFFF,
            uid=inode.uid,
            gid=inode.gid,
        )
    after = offset + item.core_size
    if xattrs:
        metadata[after : after + len(xattrs)] = xattrs
        after += len(xattrs)
    inline = item.layout == ondisk.LAYOUT_FLAT_INLINE
    if kind == "symlink":
        if inline:
            metadata[after : after + inode.size] = inode.target
        else:
            start = item.raw_block * BLOCK_SIZE
            metadata[start : start + inode.size] = inode.target
    elif kind == "dir":
        assert item.blocks is not None
        last = len(item.blocks) - 1
        for number, block in enumerate(item.blocks):
            raw = [(name, nids[child], FILE_TYPE_BY_TYPE[child.type]) for name, child in block]
            if inline and number == last:
                ondisk.pack_dir_block_into(metadata, after, raw)
            else:
                # The metadata starts zeroed: what follows the names is the block's padding.
                ondisk.pack_dir_block_into(metadata, (item.raw_block + number) * BLOCK_SIZE, raw)
