"""EROFS images of eStargz layers, sans I/O: a verified TOC in, image metadata and an
extent table out.

The kernel mounts the image (read-only EROFS, file-backed or through a loop device) and
answers every lookup, stat, readlink, getxattr and readdir from its metadata; only the
image's bytes come through the filesystem process. The image has two parts::

    [0, data_start)           metadata: superblock, inodes, xattrs, directories,
                              symlink targets. Local bytes: ``ErofsLayout.metadata``.
    [data_start, image_size)  data region: every regular file's bytes as one
                              block-aligned range (FLAT_PLAIN), in the blob's order
                              (the TOC's, prioritized files first), zeros between.

Interface:

- ``build_layout(index, toc_digest=None) -> ErofsLayout``: from a ``LayerIndex``;
  deterministic (same TOC, same bytes; the UUID derives from ``toc_digest``). Raises
  ``UnrepresentableError`` (a ``FormatError``) for what EROFS cannot hold: names over
  255 bytes, link targets over 4095, uids over 32 bits, devices beyond 4095:1048575,
  xattr values over 65535 bytes, images over 16 TiB. Xattrs outside ``user.``,
  ``trusted.``, ``security.`` and the two POSIX ACL names are left out, as mkfs does.
- ``ErofsLayout``: ``metadata`` (bytes, block-aligned), ``data_start``, ``image_size``
  (a whole number of 4 KiB blocks: the served file must be exactly this long),
  ``extents`` (``ExtentTable``), ``uuid``, ``build_time``, ``stats``.
- ``ErofsLayout.extents_at(offset, length) -> [Piece]``: the file data inside an image
  range, in order: ``Piece(image_offset, node, file_offset, length)``. Bytes of the
  range below ``data_start`` come from ``metadata``; bytes of the data region no piece
  covers are zeros. ``ErofsLayout.read(offset, length, [(piece, bytes)])`` puts the
  answer together (short at the image's end).
- ``ExtentTable``: ``extents`` (``Extent(offset, size, node)`` sorted by offset,
  non-overlapping, one per regular file with data, hardlinks once), ``extent_of(node)``
  (file -> image offset, for prefetching a file through the image), ``pieces``.
- ``layout_parts(layout, index) -> LayoutParts | None`` and ``restore_layout(index,
  toc_digest, parts) -> ErofsLayout``: a built layout kept as its metadata, stats and
  files' paths and sizes, and had again without building it (``stored``); parts that do
  not fit the index and TOC digest raise ``StoredLayoutError``.

A read served through FUSE is therefore: below ``data_start`` a slice of ``metadata``;
above, ``extents_at`` then the layer's verified chunks for each piece (``Piece.node`` is
the ``LayerIndex`` node, so ``LazyLayer.read_many([(node, file_offset, length), ...])``
applies), and
``read`` to assemble. Mapping an image offset back to (file, offset) for recording is
``extents_at(offset, 1)``.

The tree is presented as overlayfs expects a lower layer, as the lazy filesystem did:
``.wh.X`` -> char device 0/0 ``X``; ``.wh..wh..opq`` -> ``trusted.overlay.opaque=y`` on its
directory; TOC and landmark entries left out. See ``tree`` and ``layout`` for the rules.
"""

from lazybuild.erofs.extents import Extent, ExtentTable, Piece
from lazybuild.erofs.layout import ErofsLayout, LayoutStats, build_layout
from lazybuild.erofs.ondisk import BLOCK_SIZE
from lazybuild.erofs.stored import LayoutParts, StoredLayoutError, layout_parts, restore_layout
from lazybuild.erofs.tree import UnrepresentableError

__all__ = [
    "BLOCK_SIZE",
    "ErofsLayout",
    "Extent",
    "ExtentTable",
    "LayoutParts",
    "LayoutStats",
    "Piece",
    "StoredLayoutError",
    "UnrepresentableError",
    "build_layout",
    "layout_parts",
    "restore_layout",
]
