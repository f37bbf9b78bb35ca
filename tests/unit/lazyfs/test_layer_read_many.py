"""LazyLayer.read_many: several file ranges (one EROFS image read) whose missing chunks
go out together, with failures kept to the ranges that need the failed chunks."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import trio
import trio.testing

from lazybuild.cache.chunkcache import ChunkCache
from lazybuild.errors import DigestMismatchError, RegistryError
from lazybuild.estargz.index import Node
from lazybuild.lazyfs import miss_readahead
from lazybuild.lazyfs.layer import LazyLayer
from tests.unit.lazyfs.test_layer_fakes import CHUNK, MemoryBlob, build_layer, open_layer

FILES = 20


def node_of(layer: LazyLayer, path: str) -> Node:
    node = layer.index.lookup(path)
    assert node is not None, path
    return node


def small_files() -> dict[str, bytes]:
    """``FILES`` small files side by side in one directory, and one elsewhere."""
    rng = random.Random(5)
    files = {f"pkg/f{n:02}.py": rng.randbytes(rng.randrange(500, 3000)) for n in range(FILES)}
    files["elsewhere/x.bin"] = rng.randbytes(2000)
    return files


def names() -> list[str]:
    return [f"pkg/f{n:02}.py" for n in range(FILES)]


def test_one_request_for_the_small_files_of_one_image_read(tmp_path: Path) -> None:
    files = small_files()
    built = build_layer(files)
    blob = MemoryBlob(built.blob)

    async def main() -> None:
        layer = await open_layer(built, blob, tmp_path)
        nodes = [node_of(layer, name) for name in names()]
        blob.reset()
        got = await layer.read_many([(node, 0, node.size) for node in nodes])
        assert got == [files[name] for name in names()]
        await trio.testing.wait_all_tasks_blocked()
        assert blob.requests == 1
        first, last = nodes[0].chunks[0], nodes[-1].chunks[-1]
        assert blob.requested[0] == [(first.offset, last.end - first.offset)]  # one span
        assert layer.stats.chunks_fetched == FILES
        blob.reset()
        assert await layer.read_many([(node, 0, node.size) for node in nodes]) == got
        assert blob.requests == 0

    trio.run(main)


def test_the_same_ranges_read_one_by_one_cost_more_requests(tmp_path: Path) -> None:
    """What read_many saves: concurrent single reads each miss on their own."""
    files = small_files()
    built = build_layer(files)
    blob = MemoryBlob(built.blob)

    async def main() -> None:
        layer = await open_layer(built, blob, tmp_path)
        nodes = [node_of(layer, name) for name in names()]
        blob.reset()
        async with trio.open_nursery() as nursery:
            for node in nodes:
                nursery.start_soon(layer.read, node, 0, node.size)
        assert blob.requests > 1

    trio.run(main)


def test_ranges_in_memory_past_the_end_and_in_the_middle_of_chunks(tmp_path: Path) -> None:
    built = build_layer()
    blob = MemoryBlob(built.blob)
    big = built.files["dir/big.bin"]

    async def main() -> None:
        layer = await open_layer(built, blob, tmp_path)
        small, empty, multi = (node_of(layer, p) for p in ("small.txt", "empty", "multi.bin"))
        big_node = node_of(layer, "dir/big.bin")
        assert await layer.read(small, 0, 100) == built.files["small.txt"]  # now in memory
        ranges = [
            (small, 0, 100),
            (empty, 0, 10),
            (big_node, CHUNK - 5, 2 * CHUNK),  # across three chunks
            (multi, multi.size, 10),  # past the end
            (big_node, 3 * CHUNK + 1, 7),  # inside one chunk
        ]
        got = await layer.read_many(ranges)
        assert got == [
            built.files["small.txt"],
            b"",
            big[CHUNK - 5 : 3 * CHUNK - 5],
            b"",
            big[3 * CHUNK + 1 : 3 * CHUNK + 8],
        ]
        with pytest.raises(ValueError, match="not a regular file"):
            await layer.read_many([(small, 0, 1), (node_of(layer, "dir"), 0, 1)])
        with pytest.raises(ValueError, match="bad read"):
            await layer.read_many([(small, -1, 1)])

    trio.run(main)


def test_a_corrupt_chunk_fails_only_the_ranges_of_its_file(tmp_path: Path) -> None:
    files = small_files()
    built = build_layer(files)

    async def main() -> None:
        probe = await open_layer(built, MemoryBlob(built.blob), tmp_path / "probe")
        target = node_of(probe, "pkg/f07.py").chunks[0]
        damaged = bytearray(built.blob)
        damaged[(target.offset + target.end) // 2] ^= 0xFF
        cache = ChunkCache(tmp_path / "cache")
        blob = MemoryBlob(bytes(damaged))
        layer = await open_layer(built, blob, tmp_path / "real", cache)
        nodes = [node_of(layer, name) for name in names()]
        blob.reset()
        got = await layer.read_many([(node, 0, node.size) for node in nodes])
        assert blob.requests == 1
        for name, result in zip(names(), got, strict=True):
            if name == "pkg/f07.py":
                assert isinstance(result, DigestMismatchError)
                assert "pkg/f07.py" in str(result) and built.descriptor.digest in str(result)
            else:
                assert result == files[name]
        assert not cache.contains(target.digest)
        # Another read of the file fails again; the others are at hand.
        blob.reset()
        again = await layer.read_many([(nodes[6], 0, 10), (nodes[7], 0, 10)])
        assert again[0] == files["pkg/f06.py"][:10]
        assert isinstance(again[1], DigestMismatchError)
        assert blob.requests == 1  # the failed chunk only

    trio.run(main)


class _FailingBlob(MemoryBlob):
    async def read_ranges(self, ranges: list[tuple[int, int]]) -> list[bytes]:  # type: ignore[override]
        self.requests += 1
        raise RegistryError("registry unreachable")


def test_a_failed_request_fails_the_ranges_it_was_to_bring(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(miss_readahead, "SIBLING_BUDGET_BYTES", 0)  # f00 alone on disk
    files = small_files()
    built = build_layer(files)

    async def main() -> None:
        warm = await open_layer(built, MemoryBlob(built.blob), tmp_path / "warm")
        assert await warm.read(node_of(warm, "pkg/f00.py"), 0, 10) == files["pkg/f00.py"][:10]
        await warm.aclose()  # its chunks written to the disk cache
        # Same state dir (the TOC is kept), same disk cache: f00 is on disk.
        layer = await open_layer(
            built, _FailingBlob(built.blob), tmp_path / "warm", ChunkCache(tmp_path / "warm/cache")
        )
        nodes = [node_of(layer, name) for name in names()[:3]]
        got = await layer.read_many([(node, 0, node.size) for node in nodes])
        assert got[0] == files["pkg/f00.py"]
        assert all(isinstance(result, RegistryError) for result in got[1:])

    trio.run(main)


def test_a_read_of_a_chunk_on_its_way_in_a_batch_waits_for_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(miss_readahead, "SIBLING_BUDGET_BYTES", 0)
    files = small_files()
    built = build_layer(files)
    blob = MemoryBlob(built.blob)

    async def main() -> None:
        layer = await open_layer(built, blob, tmp_path)
        nodes = [node_of(layer, name) for name in names()]
        blob.reset()
        blob.hold = trio.Event()
        batch: list[list[bytes | Exception]] = []
        single: list[bytes] = []

        async def read_batch() -> None:
            batch.append(list(await layer.read_many([(n, 0, n.size) for n in nodes[:5]])))

        async def read_one() -> None:
            single.append(await layer.read(nodes[3], 0, nodes[3].size))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(read_batch)
            await trio.testing.wait_all_tasks_blocked()
            nursery.start_soon(read_one)
            await trio.testing.wait_all_tasks_blocked()
            assert blob.requests == 1  # the reader of f03 waits for the batch's request
            blob.hold.set()
        assert batch == [[files[name] for name in names()[:5]]]
        assert single == [files["pkg/f03.py"]]
        assert blob.requests == 1

    trio.run(main)
