"""Chunks of a layer as fetching sees them: each with a file it belongs to, so that a
failure names a file, and the layer's chunks once each in blob order."""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from dataclasses import dataclass

from lazybuild.estargz.index import ChunkRef, LayerIndex, Node


@dataclass(frozen=True)
class ChunkSite:
    """A chunk and the file it belongs to (for error messages)."""

    chunk: ChunkRef
    file: str

    @property
    def digest(self) -> str:
        return self.chunk.digest

    @property
    def compressed_size(self) -> int:
        return self.chunk.end - self.chunk.offset


def sites_of(node: Node, chunks: Sequence[ChunkRef] | None = None) -> list[ChunkSite]:
    """``chunks`` of ``node`` (all of them by default) as sites."""
    return [ChunkSite(chunk, node.name) for chunk in (node.chunks if chunks is None else chunks)]


class LayerSites:
    """Every chunk of a layer once, in blob order (identical chunks share one digest, so
    one fetch); worked out on first use, as most layers are never walked whole."""

    def __init__(self, index: LayerIndex) -> None:
        self._index = index
        self._by_offset: list[ChunkSite] | None = None

    def by_offset(self) -> list[ChunkSite]:
        if self._by_offset is None:
            by_digest: dict[str, ChunkSite] = {}
            for node in self._index.walk():
                if node.type == "reg":
                    for chunk in node.chunks:
                        by_digest.setdefault(chunk.digest, ChunkSite(chunk, node.name))
            self._by_offset = sorted(by_digest.values(), key=lambda site: site.chunk.offset)
        return self._by_offset


def covering(chunks: Sequence[ChunkRef], offset: int, end: int) -> tuple[int, int]:
    """The slice of a file's ``chunks`` that holds bytes [offset, end) of it."""
    first = bisect.bisect_right(chunks, offset, key=lambda c: c.chunk_offset) - 1
    last = bisect.bisect_left(chunks, end, key=lambda c: c.chunk_offset)
    return first, last


def chunks_under(node: Node, ranges: Sequence[tuple[int, int]]) -> list[ChunkRef]:
    """The chunks of ``node`` holding bytes of ``ranges``, in the order the ranges come."""
    picked: list[ChunkRef] = []
    for offset, length in ranges:
        end = min(offset + length, node.size)
        if offset < end and node.chunks:
            first, last = covering(node.chunks, offset, end)
            picked.extend(node.chunks[first:last])
    return picked


def batches(sites: Sequence[ChunkSite], max_bytes: int) -> list[list[ChunkSite]]:
    """``sites`` in order, cut into runs of at most ``max_bytes`` compressed (a chunk
    larger than that alone): one request each."""
    runs: list[list[ChunkSite]] = []
    current: list[ChunkSite] = []
    current_bytes = 0
    for site in sites:
        if current and current_bytes + site.compressed_size > max_bytes:
            runs.append(current)
            current, current_bytes = [], 0
        current.append(site)
        current_bytes += site.compressed_size
    if current:
        runs.append(current)
    return runs
