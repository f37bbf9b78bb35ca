"""LazyLayer.read: content, request shape, single flight, caching, corruption."""

from __future__ import annotations

import logging
import random
from pathlib import Path

import pytest
import trio
import trio.testing

from lazybuild.cache.chunkcache import ChunkCache
from lazybuild.errors import DigestMismatchError
from lazybuild.estargz.index import Node
from lazybuild.lazyfs.layer import LazyLayer
from tests.unit.lazyfs.test_layer_fakes import CHUNK, MemoryBlob, build_layer, open_layer


def node_of(layer: LazyLayer, path: str) -> Node:
    node = layer.index.lookup(path)
    assert node is not None, path
    return node


def test_random_reads_equal_content(tmp_path: Path) -> None:
    built = build_layer()
    blob = MemoryBlob(built.blob)
    rng = random.Random(7)

    async def main() -> None:
        layer = await open_layer(built, blob, tmp_path)
        for path, data in built.files.items():
            node = node_of(layer, path)
            assert await layer.read(node, 0, len(data) + 10) == data
            for _ in range(30):
                offset = rng.randrange(0, len(data) + 3)
                size = rng.randrange(0, 3 * CHUNK)
                assert await layer.read(node, offset, size) == data[offset : offset + size]

    trio.run(main)


def test_one_request_for_adjacent_missing_chunks(tmp_path: Path) -> None:
    built = build_layer()
    blob = MemoryBlob(built.blob)

    async def main() -> None:
        layer = await open_layer(built, blob, tmp_path)
        node = node_of(layer, "dir/big.bin")
        blob.reset()
        data = await layer.read(node, CHUNK // 2, 4 * CHUNK)  # touches 5 chunks
        assert data == built.files["dir/big.bin"][CHUNK // 2 : CHUNK // 2 + 4 * CHUNK]
        assert blob.requests == 1
        assert len(blob.requested[0]) == 1  # contiguous: one span
        chunks = node.chunks[0:5]
        assert blob.requested[0] == [(chunks[0].offset, chunks[-1].end - chunks[0].offset)]
        assert layer.stats.chunks_fetched == 5

    trio.run(main)


def test_concurrent_reads_share_one_fetch(tmp_path: Path) -> None:
    built = build_layer()
    blob = MemoryBlob(built.blob)

    async def main() -> None:
        layer = await open_layer(built, blob, tmp_path)
        node = node_of(layer, "multi.bin")
        blob.reset()
        blob.hold = trio.Event()
        results: list[bytes] = []

        async def reader(offset: int) -> None:
            results.append(await layer.read(node, offset, 100))

        async with trio.open_nursery() as nursery:
            for offset in range(0, 1000, 100):  # ten reads of the same first chunk
                nursery.start_soon(reader, offset)
            await settle()
            blob.hold.set()
        assert blob.requests == 1
        assert sorted(results) == sorted(
            built.files["multi.bin"][o : o + 100] for o in range(0, 1000, 100)
        )

    trio.run(main)


def test_second_layer_reads_from_cache_without_requests(tmp_path: Path) -> None:
    built = build_layer()

    async def main() -> None:
        cache = ChunkCache(tmp_path / "cache")
        first = await open_layer(built, MemoryBlob(built.blob), tmp_path, cache)
        for path, data in built.files.items():
            assert await first.read(node_of(first, path), 0, len(data)) == data
        blob = MemoryBlob(built.blob)
        second = await open_layer(built, blob, tmp_path, cache)
        blob.reset()
        for path, data in built.files.items():
            assert await second.read(node_of(second, path), 0, len(data)) == data
        assert blob.requests == 0
        assert second.stats.cache_hits > 0
        assert second.stats.chunks_fetched == 0

    trio.run(main)


def test_hot_sequential_reads_stay_in_memory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    built = build_layer()
    blob = MemoryBlob(built.blob)

    async def main() -> None:
        cache = ChunkCache(tmp_path / "cache")
        layer = await open_layer(built, blob, tmp_path, cache)
        node = node_of(layer, "dir/big.bin")
        await layer.read(node, 0, node.size)
        disk_gets: list[str] = []
        real_get = cache.get

        def counting_get(digest: str) -> bytes | None:
            disk_gets.append(digest)
            return real_get(digest)

        monkeypatch.setattr(cache, "get", counting_get)
        data = b"".join([await layer.read(node, o, 4096) for o in range(0, node.size, 4096)])
        assert data == built.files["dir/big.bin"]
        assert disk_gets == []

    trio.run(main)


def test_corrupted_chunk_raises_and_caches_nothing(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    built = build_layer()

    async def main() -> None:
        cache = ChunkCache(tmp_path / "cache")
        clean = await open_layer(built, MemoryBlob(built.blob), tmp_path, cache)
        node = node_of(clean, "multi.bin")
        target = node.chunks[1]
        damaged = bytearray(built.blob)
        damaged[(target.offset + target.end) // 2] ^= 0xFF
        layer = await open_layer(built, MemoryBlob(bytes(damaged)), tmp_path, cache)
        node = node_of(layer, "multi.bin")
        with pytest.raises(DigestMismatchError) as raised, caplog.at_level(logging.ERROR):
            await layer.read(node, 0, 3 * CHUNK)
        assert built.descriptor.digest in str(raised.value)
        assert "multi.bin" in str(raised.value)
        assert not cache.contains(target.digest)
        assert any(
            "multi.bin" in r.getMessage() and built.descriptor.digest in r.getMessage()
            for r in caplog.records
        )
        # A clean chunk of the same request was fine, and a later read fails again.
        with pytest.raises(DigestMismatchError):
            await layer.read(node, CHUNK, 10)

    trio.run(main)


def test_concurrent_waiters_see_the_failure(tmp_path: Path) -> None:
    built = build_layer()
    damaged = bytearray(built.blob)

    async def main() -> None:
        probe = await open_layer(built, MemoryBlob(built.blob), tmp_path)
        chunk = node_of(probe, "multi.bin").chunks[0]
        damaged[chunk.end - 20] ^= 0x55
        blob = MemoryBlob(bytes(damaged))
        layer = await open_layer(built, blob, tmp_path, ChunkCache(tmp_path / "other"))
        node = node_of(layer, "multi.bin")
        blob.reset()
        blob.hold = trio.Event()
        failures: list[BaseException] = []

        async def reader() -> None:
            try:
                await layer.read(node, 0, 10)
            except DigestMismatchError as exc:
                failures.append(exc)

        async with trio.open_nursery() as nursery:
            for _ in range(4):
                nursery.start_soon(reader)
            await settle()
            blob.hold.set()
        assert len(failures) == 4
        assert blob.requests == 1

    trio.run(main)


def test_cancelled_fetch_lets_waiters_fetch_themselves(tmp_path: Path) -> None:
    built = build_layer()
    blob = MemoryBlob(built.blob)

    async def main() -> None:
        layer = await open_layer(built, blob, tmp_path)
        node = node_of(layer, "exact.bin")
        blob.reset()
        blob.hold = trio.Event()
        got: list[bytes] = []

        async def waiter() -> None:
            got.append(await layer.read(node, 0, 50))

        async with trio.open_nursery() as nursery:
            leader_scope = trio.CancelScope()
            nursery.start_soon(_read_in, layer, node, leader_scope)
            await settle()
            nursery.start_soon(waiter)
            await settle()
            leader_scope.cancel()
            await settle()
            blob.hold.set()
        assert got == [built.files["exact.bin"][:50]]
        assert blob.requests == 2  # the cancelled fetch, then the waiter's own

    trio.run(main)


async def _read_in(layer: LazyLayer, node: Node, scope: trio.CancelScope) -> None:
    with scope:
        await layer.read(node, 0, 10)


def test_read_past_end_and_empty_file(tmp_path: Path) -> None:
    built = build_layer()
    blob = MemoryBlob(built.blob)

    async def main() -> None:
        layer = await open_layer(built, blob, tmp_path)
        blob.reset()
        assert await layer.read(node_of(layer, "empty"), 0, 100) == b""
        small = node_of(layer, "small.txt")
        assert await layer.read(small, small.size, 10) == b""
        assert blob.requests == 0
        with pytest.raises(ValueError):
            await layer.read(node_of(layer, "dir"), 0, 1)

    trio.run(main)


async def settle() -> None:
    """Let every task run until it waits on the registry or an event (worker threads too)."""
    for _ in range(5):
        await trio.sleep(0.02)
        await trio.testing.wait_all_tasks_blocked()


def test_sequential_reads_load_each_cached_chunk_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    built = build_layer()

    async def main() -> None:
        cache = ChunkCache(tmp_path / "cache")
        warm = await open_layer(built, MemoryBlob(built.blob), tmp_path, cache)
        node = node_of(warm, "dir/big.bin")
        await warm.read(node, 0, node.size)
        disk_gets: list[str] = []
        real_get = cache.get

        def counting_get(digest: str) -> bytes | None:
            disk_gets.append(digest)
            return real_get(digest)

        monkeypatch.setattr(cache, "get", counting_get)
        blob = MemoryBlob(built.blob)
        layer = await open_layer(built, blob, tmp_path, cache)  # cold memory, warm disk
        blob.reset()
        data = b"".join([await layer.read(node, o, 4096) for o in range(0, node.size, 4096)])
        assert data == built.files["dir/big.bin"]
        assert sorted(disk_gets) == sorted(c.digest for c in node.chunks)  # read-ahead included
        assert blob.requests == 0

    trio.run(main)
