"""Test doubles for LazyLayer tests: an in-memory RemoteBlob and small eStargz layers.

(Named test_layer_* to stay inside the files this work owns; it holds no tests.)
"""

from __future__ import annotations

import io
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import cast

import trio

from lazybuild.cache.chunkcache import ChunkCache
from lazybuild.estargz import WriterOptions, write_estargz
from lazybuild.lazyfs.layer import LazyLayer
from lazybuild.oci import mediatypes
from lazybuild.oci.descriptor import Descriptor
from lazybuild.registry.blob import FetchStats, RemoteBlob
from lazybuild.registry.ranges import merge_spans
from tests.unit.estargz.esgz_helpers import Member, make_tar, pseudo_random

CHUNK = 16 << 10


class MemoryBlob:
    """The RemoteBlob surface over bytes; counts requests and bytes like a registry would.

    One ``read_ranges`` or ``stream_ranges`` call is one request (a multi-range GET);
    ``hold`` (when set) blocks every request until it is set, to line up concurrent
    readers; ``pause_at`` stalls a streamed answer part way.
    """

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.size = len(data)
        self.requests = 0
        self.bytes_sent = 0
        self.requested: list[list[tuple[int, int]]] = []
        self.hold: trio.Event | None = None
        self.pause_at: tuple[int, trio.Event] | None = None

    @property
    def stats(self) -> FetchStats:
        return FetchStats(self.requests, self.bytes_sent)

    async def read_at(self, offset: int, length: int) -> bytes:
        return (await self.read_ranges([(offset, length)]))[0]

    async def read_ranges(self, ranges: Sequence[tuple[int, int]]) -> list[bytes]:
        for offset, length in ranges:
            assert offset >= 0 and offset + length <= self.size, (offset, length)
        self.requests += 1
        spans = merge_spans(ranges)
        self.requested.append([(start, stop - start) for start, stop in spans])
        self.bytes_sent += sum(stop - start for start, stop in spans)
        if self.hold is not None:
            await self.hold.wait()
        await trio.lowlevel.checkpoint()
        return [self.data[offset : offset + length] for offset, length in ranges]

    async def stream_ranges(
        self, ranges: Sequence[tuple[int, int]], arrived: Callable[[int, bytes], None]
    ) -> None:
        """``read_ranges``, handed over range by range in the order their bytes would
        come (by end); with ``pause_at`` = (offset, event), the ranges ending after
        ``offset`` wait for the event, as if the answer stalled there."""
        got = await self.read_ranges(ranges)
        for index in sorted(range(len(ranges)), key=lambda i: sum(ranges[i])):
            if self.pause_at is not None and sum(ranges[index]) > self.pause_at[0]:
                await self.pause_at[1].wait()
            arrived(index, got[index])
            await trio.lowlevel.checkpoint()

    def reset(self) -> None:
        self.requests = self.bytes_sent = 0
        self.requested = []

    def as_remote(self) -> RemoteBlob:
        return cast(RemoteBlob, self)


@dataclass
class Built:
    blob: bytes
    descriptor: Descriptor
    files: dict[str, bytes] = field(default_factory=dict)


def default_files() -> dict[str, bytes]:
    return {
        "small.txt": b"hello lazy world\n",
        "empty": b"",
        "multi.bin": pseudo_random(5 * CHUNK + 1234, 1),
        "exact.bin": pseudo_random(2 * CHUNK, 2),
        "dir/one.bin": pseudo_random(CHUNK - 7, 3),
        "dir/big.bin": pseudo_random(9 * CHUNK + 5, 4),
        "dup-of-exact.bin": pseudo_random(2 * CHUNK, 2),
    }


def build_layer(
    files: dict[str, bytes] | None = None,
    prioritized: list[str] | None = None,
    chunk_size: int = CHUNK,
    *,
    annotate: bool = True,
    extra_members: list[Member] | None = None,
    hints: bool = False,
) -> Built:
    """A layer of ``files``; ``annotate`` gives it its TOC digest annotation, ``hints``
    lazybuild's layout hints too (TOC offset, prefetch region size)."""
    contents = default_files() if files is None else files
    members = [Member(name, data=data) for name, data in contents.items()]
    members += extra_members or []
    out = io.BytesIO()
    written = write_estargz(
        io.BytesIO(make_tar(members)),
        out,
        WriterOptions(chunk_size=chunk_size, workers=2, prioritized_files=prioritized),
    )
    annotations = {mediatypes.TOC_DIGEST_ANNOTATION: written.toc_digest} if annotate else {}
    if hints:
        annotations[mediatypes.TOC_OFFSET_ANNOTATION] = str(written.toc_offset)
        if written.prefetch_region_size:
            annotations[mediatypes.PREFETCH_REGION_ANNOTATION] = str(written.prefetch_region_size)
    descriptor = Descriptor(
        mediatypes.OCI_LAYER_GZIP, written.digest, written.size, annotations=annotations
    )
    return Built(out.getvalue(), descriptor, dict(contents))


async def open_layer(
    built: Built, blob: MemoryBlob, tmp: Path, cache: ChunkCache | None = None
) -> LazyLayer:
    return await LazyLayer.open(
        blob.as_remote(),
        built.descriptor,
        cache or ChunkCache(tmp / "cache"),
        state_dir=tmp / "state",
    )
