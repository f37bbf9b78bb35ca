"""The read-ahead window across files, through a layer's reads as the kernel's EROFS
reads make them: a big file read in order, and one miss reported by several reads."""

from __future__ import annotations

import random
from pathlib import Path

import trio
import trio.testing

from lazybuild.estargz.index import Node
from lazybuild.lazyfs.layer import LazyLayer
from lazybuild.lazyfs.readwindow import FIRST_WINDOW
from tests.unit.lazyfs.test_layer_fakes import MemoryBlob, build_layer, open_layer


def node_of(layer: LazyLayer, path: str) -> Node:
    node = layer.index.lookup(path)
    assert node is not None, path
    return node


def requested_past(blob: MemoryBlob, offset: int) -> int:
    """Bytes asked for at or after blob ``offset``."""
    return sum(
        max(0, start + length - max(start, offset))
        for request in blob.requested
        for start, length in request
    )


async def read_concurrently(layer: LazyLayer, node: Node, offset: int, reads: int) -> None:
    """``reads`` reads of 4 KiB from ``offset`` on, all at once, as the kernel issues the
    pieces of one read-ahead."""
    async with trio.open_nursery() as nursery:
        for n in range(reads):
            nursery.start_soon(layer.read_many, [(node, offset + n * 4096, 4096)])


def test_a_big_file_read_in_order_fetches_none_of_the_files_after_it(tmp_path: Path) -> None:
    """A program read chunk after chunk (the interpreter loaded by exec) is a sequential
    reader of its own file only: the files after it in the blob (the other programs of
    /usr/bin) stay where they are, however many reads report each miss."""
    rng = random.Random(5)
    chunk_size = 160 << 10  # two chunks: too big a file to come along as a sibling
    files = {"bin/prog": rng.randbytes(2 * chunk_size)}
    files |= {f"next/f{n:03}": rng.randbytes(4000) for n in range(100)}
    built = build_layer(files, chunk_size=chunk_size)
    blob = MemoryBlob(built.blob)

    async def main() -> None:
        layer = await open_layer(built, blob, tmp_path)
        prog = node_of(layer, "bin/prog")
        blob.reset()
        for chunk in range(2):
            await read_concurrently(layer, prog, chunk * chunk_size, 4)
            await trio.testing.wait_all_tasks_blocked()
        assert requested_past(blob, prog.chunks[-1].end) == 0
        assert requested_past(blob, 0) == prog.chunks[-1].end - prog.chunks[0].offset

    trio.run(main)


def test_one_miss_reported_by_several_reads_widens_the_window_once(tmp_path: Path) -> None:
    """A reader walking files in order whose every miss arrives as several reads at once
    (a chunk too big to be read from the disk cache without a thread hop, so that each
    read gets to miss before the first claims the chunk) gets the window one step gives,
    not one doubling and one more stretch of files per read."""
    rng = random.Random(6)
    # Each file 20 KB compressed, 300 KB uncompressed; a directory each, so that the
    # siblings of a directory's first miss stay out of the way.
    files = {f"d{n:03}/f": rng.randbytes(20_000) + bytes(280_000) for n in range(200)}
    built = build_layer(files, chunk_size=1 << 20)
    blob = MemoryBlob(built.blob)

    async def main() -> None:
        layer = await open_layer(built, blob, tmp_path)
        first, second = node_of(layer, "d000/f"), node_of(layer, "d001/f")
        await layer.read(first, 0, 4096)
        await trio.testing.wait_all_tasks_blocked()
        blob.reset()
        await read_concurrently(layer, second, 0, 8)
        await trio.testing.wait_all_tasks_blocked()
        assert 0 < requested_past(blob, second.chunks[0].end) <= FIRST_WINDOW

    trio.run(main)
