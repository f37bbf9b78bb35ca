"""Byte ranges of a layer's files, cut from verified chunks: one range, or several
whose missing chunks are all loaded together.

An EROFS image read of 128 KiB or more can cover dozens of small files; read one by
one, each would miss on its own and go out as a request of its own. Read together,
their missing chunks go out in one request (adjacent ones as one span), and a chunk
that fails its check fails only the ranges that need it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from lazybuild.errors import LazybuildError
from lazybuild.estargz.index import ChunkRef, Node
from lazybuild.lazyfs.chunk_fetcher import ChunkFetcher, MissHandler
from lazybuild.lazyfs.chunk_site import covering, sites_of

# Chunks of a file loaded from the disk cache ahead of a sequential reader, so disk
# reads and integrity checks overlap with serving the current chunk (measured on a
# 500 MB file: 1 ahead ~530 MB/s, 2 ~720 MB/s, 3 ~780 MB/s).
READ_AHEAD_CHUNKS = 3

FileRange = tuple[Node, int, int]
"""(regular file, offset, size): as ``read`` takes them."""

RangeResult = bytes | LazybuildError | OSError
"""The bytes of a range (short at the end of its file), or why they could not be had."""


@dataclass(frozen=True)
class _Span:
    """A read within a file, and the slice of its chunks that holds it."""

    node: Node
    offset: int
    end: int
    first: int
    last: int

    @property
    def chunks(self) -> list[ChunkRef]:
        return self.node.chunks[self.first : self.last]

    def cut(self, contents: Mapping[str, bytes]) -> bytes:
        chunks = self.chunks
        if (
            len(chunks) == 1
            and self.offset == chunks[0].chunk_offset
            and self.end - self.offset == len(whole := contents[chunks[0].digest])
        ):
            return whole  # a read of exactly one chunk: no copy
        pieces = [
            memoryview(contents[chunk.digest])[
                max(0, self.offset - chunk.chunk_offset) : min(
                    chunk.size, self.end - chunk.chunk_offset
                )
            ]
            for chunk in chunks
        ]
        return bytes(pieces[0]) if len(pieces) == 1 else b"".join(pieces)


class FileReader:
    def __init__(
        self, fetcher: ChunkFetcher, on_miss: MissHandler, after_read: Callable[[Node], None]
    ) -> None:
        """``on_miss`` is told what a read is about to fetch (read-ahead policy);
        ``after_read`` of each file read (the libraries of programs)."""
        self._fetcher = fetcher
        self._on_miss = on_miss
        self._after_read = after_read

    async def read(self, node: Node, offset: int, size: int) -> bytes:
        """Bytes [offset, offset+size) of regular file ``node``, short at its end; the
        first failure of a chunk they need is raised."""
        (result,) = await self.read_many([(node, offset, size)])
        if not isinstance(result, bytes):
            raise result
        return result

    async def read_many(self, ranges: Sequence[FileRange]) -> list[RangeResult]:
        """``read`` of each of ``ranges``, in order, with every missing chunk of them
        loaded together: those not cached nor on their way go out in one request. A
        range that cannot be had gets its exception in its place instead of bytes (the
        first of its chunks that failed), so the caller can say which file failed; the
        other ranges are served. ValueError for a range that is not a regular file's
        or is negative, before anything is read."""
        spans = [_span(node, offset, size) for node, offset, size in ranges]
        contents: dict[str, bytes] = {}
        to_load: list[tuple[int, _Span]] = []
        for position, span in enumerate(spans):
            if span is not None:
                found = self._fetcher.from_memory(span.chunks)
                if found is None:
                    to_load.append((position, span))
                else:
                    contents.update(found)
        failures: dict[int, LazybuildError | OSError] = {}
        if to_load:
            sites = [site for _, span in to_load for site in sites_of(span.node, span.chunks)]
            try:
                loaded = await self._fetcher.load(sites, on_miss=self._on_miss)
            except (LazybuildError, OSError) as exc:  # the disk cache: no range is had
                failures = {position: exc for position, _ in to_load}
            else:
                contents.update(loaded.contents)
                for position, span in to_load:
                    failure = loaded.failure_of(chunk.digest for chunk in span.chunks)
                    if failure is not None:
                        failures[position] = failure
        results: list[RangeResult] = []
        for position, span in enumerate(spans):
            if span is None:
                results.append(b"")
            elif position in failures:
                results.append(failures[position])
            else:
                self._read_done(span)
                results.append(span.cut(contents))
        return results

    def _read_done(self, span: _Span) -> None:
        for ahead in span.node.chunks[span.last : span.last + READ_AHEAD_CHUNKS]:
            self._fetcher.warm(ahead)
        self._after_read(span.node)


def _span(node: Node, offset: int, size: int) -> _Span | None:
    """Where the read is in ``node``'s chunks; None when it holds no byte."""
    if node.type != "reg":
        raise ValueError(f"{node.name!r} is a {node.type}, not a regular file")
    if offset < 0 or size < 0:
        raise ValueError(f"bad read ({offset}, {size}) of {node.name!r}")
    end = min(node.size, offset + size)
    if offset >= end:
        return None
    first, last = covering(node.chunks, offset, end)
    return _Span(node, offset, end, first, last)
