"""Where each regular file's bytes sit in an image's data region, and back.

The data region holds one block-aligned range per regular file with data; the bytes
between a file's end and the next block are zeros, as is anything past the last file.
"""

from __future__ import annotations

import bisect
import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

from lazybuild.estargz.index import Node


class Extent(NamedTuple):
    """A regular file's data: image bytes ``[offset, offset + size)`` are the file's
    bytes ``[0, size)``. ``offset`` is block-aligned. A tuple, as an image has one per
    file and makes them all at once (a frozen dataclass takes twice as long)."""

    offset: int
    size: int
    node: Node

    @property
    def end(self) -> int:
        return self.offset + self.size


@dataclass(frozen=True)
class Piece:
    """Part of an image read that is file data: image bytes ``[image_offset, +length)``
    are ``node``'s bytes ``[file_offset, +length)``."""

    image_offset: int
    node: Node
    file_offset: int
    length: int


class ExtentTable:
    """Extents sorted by offset (they never overlap), with lookups both ways."""

    def __init__(self, extents: Sequence[Extent]) -> None:
        self.extents: tuple[Extent, ...] = tuple(sorted(extents, key=lambda e: e.offset))
        self._starts = [e.offset for e in self.extents]
        self._by_node = {e.node: e for e in self.extents}
        for before, after in itertools.pairwise(self.extents):
            if before.end > after.offset:
                raise ValueError(f"extents overlap at {after.offset}")

    def __len__(self) -> int:
        return len(self.extents)

    def extent_of(self, node: Node) -> Extent | None:
        """Where ``node``'s data sits (None for a file with no data or no such file)."""
        return self._by_node.get(node)

    def pieces(self, offset: int, length: int) -> list[Piece]:
        """The file data inside image bytes ``[offset, offset + length)``, in order.
        Bytes of the range no piece covers read as zeros (block padding, gaps)."""
        if length <= 0 or not self.extents:
            return []
        end = offset + length
        position = max(0, bisect.bisect_right(self._starts, offset) - 1)
        found = []
        for index in range(position, len(self.extents)):
            extent = self.extents[index]
            if extent.offset >= end:
                break
            start = max(offset, extent.offset)
            stop = min(end, extent.end)
            if start < stop:
                found.append(Piece(start, extent.node, start - extent.offset, stop - start))
        return found
