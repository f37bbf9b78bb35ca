"""The first miss in a directory brings the directory's nearest small files along."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import trio
import trio.testing

from lazybuild.estargz.index import Node
from lazybuild.lazyfs import miss_readahead
from lazybuild.lazyfs.layer import LazyLayer
from tests.unit.lazyfs.test_layer_fakes import MemoryBlob, build_layer, open_layer


def node_of(layer: LazyLayer, path: str) -> Node:
    node = layer.index.lookup(path)
    assert node is not None, path
    return node


def spans_of(node: Node) -> list[tuple[int, int]]:
    return [(chunk.offset, chunk.end) for chunk in node.chunks]


def fetched(blob: MemoryBlob, node: Node) -> bool:
    """Whether every chunk of ``node`` lies inside a span some request asked for."""
    spans = [(start, start + length) for request in blob.requested for start, length in request]
    return all(
        any(start <= offset and end <= stop for start, stop in spans)
        for offset, end in spans_of(node)
    )


def headers() -> dict[str, bytes]:
    rng = random.Random(11)
    files = {f"include/h{n:02}.h": rng.randbytes(2000) for n in range(20)}
    files["include/huge.bin"] = rng.randbytes(miss_readahead.SIBLING_FILE_MAX_BYTES + 1)
    files["other/far.h"] = rng.randbytes(2000)
    return files


def test_first_miss_in_a_directory_fetches_its_small_files_alongside(tmp_path: Path) -> None:
    files = headers()
    built = build_layer(files)
    blob = MemoryBlob(built.blob)

    async def main() -> None:
        layer = await open_layer(built, blob, tmp_path)
        blob.reset()
        # A file in the middle of the directory: siblings on both sides come along,
        # including ones before it in the blob (which the read-ahead window never takes).
        assert await layer.read(node_of(layer, "include/h10.h"), 0, 4096) == files["include/h10.h"]
        await trio.testing.wait_all_tasks_blocked()
        assert blob.requests == 2  # the reader's, and the siblings' alongside
        for n in range(20):
            assert fetched(blob, node_of(layer, f"include/h{n:02}.h")), n
        assert not fetched(blob, node_of(layer, "include/huge.bin"))  # not a small file
        assert not fetched(blob, node_of(layer, "other/far.h"))  # another directory
        blob.reset()
        for n in (0, 5, 19):
            path = f"include/h{n:02}.h"
            assert await layer.read(node_of(layer, path), 0, 4096) == files[path]
        assert blob.requests == 0

    trio.run(main)


def test_siblings_come_nearest_first_within_the_budget_once_per_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    files = headers()
    built = build_layer(files)
    blob = MemoryBlob(built.blob)

    async def main() -> None:
        layer = await open_layer(built, blob, tmp_path)
        missed = node_of(layer, "include/h10.h")
        # Room for the four nearest siblings' chunks (compressed) and not for a fifth.
        by_distance = sorted(
            (node_of(layer, f"include/h{n:02}.h") for n in range(20) if n != 10),
            key=lambda node: abs(node.chunks[0].offset - missed.chunks[0].offset),
        )
        sizes = [node.chunks[0].end - node.chunks[0].offset for node in by_distance]
        monkeypatch.setattr(miss_readahead, "SIBLING_BUDGET_BYTES", sum(sizes[:4]))
        blob.reset()
        await layer.read(missed, 0, 4096)
        await trio.testing.wait_all_tasks_blocked()
        assert [fetched(blob, node) for node in by_distance] == [True] * 4 + [False] * 15
        # A second miss in the same directory fetches only itself.
        blob.reset()
        far = by_distance[-1]
        assert await layer.read(far, 0, 4096) == files[far.name]
        await trio.testing.wait_all_tasks_blocked()
        assert blob.requested == [
            [(far.chunks[0].offset, far.chunks[0].end - far.chunks[0].offset)]
        ]

    trio.run(main)
