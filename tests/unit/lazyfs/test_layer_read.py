"""LazyLayer.read: content, request shape, single flight, caching, corruption."""

from __future__ import annotations

import json
import logging
import random
from pathlib import Path

import pytest
import trio
import trio.testing

from lazybuild.cache.chunkcache import ChunkCache
from lazybuild.errors import DigestMismatchError
from lazybuild.estargz.index import Node
from lazybuild.lazyfs import miss_readahead, prefetch
from lazybuild.lazyfs.fetchtrace import TOC_LABEL
from lazybuild.lazyfs.layer import LazyLayer
from tests.unit.estargz.esgz_helpers import pseudo_random
from tests.unit.lazyfs.test_layer_fakes import (
    CHUNK,
    MemoryBlob,
    build_layer,
    open_layer,
)


@pytest.fixture(autouse=True)
def no_sibling_fetches(monkeypatch: pytest.MonkeyPatch) -> None:
    """These tests count the requests of one mechanism at a time; the files that come
    along on a directory's first miss have tests of their own (test_layer_siblings)."""
    monkeypatch.setattr(miss_readahead, "SIBLING_BUDGET_BYTES", 0)


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
        await settle()  # read-ahead lands in the disk cache after its readers woke
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


class _WindowHoldingBlob(MemoryBlob):
    """Holds every request that does not fetch ``wanted_offset`` until ``release``."""

    def __init__(self, data: bytes) -> None:
        super().__init__(data)
        self.wanted_offset = -1
        self.release = trio.Event()
        self.held = 0

    async def read_ranges(self, ranges: list[tuple[int, int]]) -> list[bytes]:  # type: ignore[override]
        if self.wanted_offset >= 0 and all(offset != self.wanted_offset for offset, _ in ranges):
            self.held += 1
            await self.release.wait()
        return await super().read_ranges(ranges)


def test_the_read_ahead_window_does_not_hold_up_the_read_that_opened_it(tmp_path: Path) -> None:
    """A miss right after the last fetch opens a window of neighbouring files; the
    reader's own chunk comes in its own request, and readers of the window's chunks
    wait for the window's request instead of fetching again."""
    rng = random.Random(3)
    files = {f"pkg/f{n:02}.bin": rng.randbytes(3000) for n in range(30)}
    built = build_layer(files)
    blob = _WindowHoldingBlob(built.blob)

    async def main() -> None:
        layer = await open_layer(built, blob, tmp_path)
        first, second, third = (node_of(layer, f"pkg/f{n:02}.bin") for n in range(3))
        assert await layer.read(first, 0, 4096) == files["pkg/f00.bin"]
        blob.reset()
        blob.wanted_offset = second.chunks[0].offset
        with trio.fail_after(5):
            assert await layer.read(second, 0, 4096) == files["pkg/f01.bin"]
        assert blob.requests == 1 and blob.requested[0] == [
            (second.chunks[0].offset, second.chunks[0].end - second.chunks[0].offset)
        ]
        await trio.testing.wait_all_tasks_blocked()
        assert blob.held == 1  # the window's request, waiting
        async with trio.open_nursery() as nursery:
            got: list[bytes] = []

            async def read_third() -> None:
                got.append(await layer.read(third, 0, 4096))

            nursery.start_soon(read_third)
            await trio.testing.wait_all_tasks_blocked()
            assert not got  # waiting for the window, not fetching on its own
            blob.release.set()
        assert got == [files["pkg/f02.bin"]]
        assert blob.requests == 2  # the reader's and the window's
        assert third.chunks[0].offset >= blob.requested[1][0][0]

    trio.run(main)


def test_fetch_trace_logs_each_request(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    trace = tmp_path / "trace.jsonl"
    monkeypatch.setenv("LAZYBUILD_FETCH_TRACE", str(trace))
    built = build_layer()
    blob = MemoryBlob(built.blob)

    async def main() -> None:
        layer = await open_layer(built, blob, tmp_path)
        (toc,) = [json.loads(line) for line in trace.read_text().splitlines()]
        assert toc["some_files"] == [TOC_LABEL] and toc["bytes"] > 0
        trace.unlink()
        await layer.read(node_of(layer, "dir/big.bin"), 0, 2 * CHUNK)
        lines = [json.loads(line) for line in trace.read_text().splitlines()]
        assert len(lines) == 1
        assert lines[0]["some_files"] == ["dir/big.bin"] and lines[0]["files"] == 1
        # Where in the file each chunk of the request starts.
        assert lines[0]["some_chunks"] == ["dir/big.bin@0", f"dir/big.bin@{CHUNK}"]
        assert lines[0]["bytes"] > 0 and lines[0]["end"] >= lines[0]["start"]

    trio.run(main)


def test_learned_prefetch_fetches_the_files_once_and_readers_wait_for_it(
    tmp_path: Path,
) -> None:
    built = build_layer()
    blob = MemoryBlob(built.blob)

    async def main() -> None:
        layer = await open_layer(built, blob, tmp_path)
        blob.reset()
        blob.hold = trio.Event()
        paths = ["dir/big.bin", "small.txt", "not/there", "dir"]
        chunks, size = await layer.prefetch_files(paths)
        big, small = node_of(layer, "dir/big.bin"), node_of(layer, "small.txt")
        assert chunks == len(big.chunks) + len(small.chunks)
        assert size == sum(c.end - c.offset for c in [*big.chunks, *small.chunks])
        # Scheduled, not yet answered: a reader waits for the prefetch, no request of its own.
        async with trio.open_nursery() as nursery:
            got: list[bytes] = []

            async def read_small() -> None:
                got.append(await layer.read(small, 0, 100))

            nursery.start_soon(read_small)
            await trio.testing.wait_all_tasks_blocked()
            requests_while_held = blob.requests
            blob.hold.set()
        assert got == [built.files["small.txt"]]
        assert requests_while_held == blob.requests  # the reader added none
        assert await layer.read(big, 0, 3 * CHUNK) == built.files["dir/big.bin"][: 3 * CHUNK]
        # The rest of the file waits for the prefetch to land: chunks still on their way
        # count as not cached yet.
        assert await layer.read(big, 0, big.size) == built.files["dir/big.bin"]
        before = blob.requests
        assert await layer.prefetch_files(paths) == (0, 0)  # all cached now
        assert blob.requests == before

    trio.run(main)


@pytest.mark.parametrize("whole_file_max", [1 << 30, 4 * CHUNK])
def test_a_file_missed_in_a_second_chunk_is_fetched_whole(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, whole_file_max: int
) -> None:
    """A program faulting a mapped file in, chunk by chunk out of order, gets the rest
    of the file after its second miss; a file above the limit stays on demand."""
    monkeypatch.setattr(miss_readahead, "WHOLE_FILE_MAX_BYTES", whole_file_max)
    built = build_layer()
    blob = MemoryBlob(built.blob)
    data = built.files["dir/big.bin"]

    async def main() -> None:
        layer = await open_layer(built, blob, tmp_path)
        node = node_of(layer, "dir/big.bin")
        blob.reset()
        # Two misses, out of order. The first is the last chunk: a miss elsewhere would
        # start the disk read-ahead of the chunks after it, whose flights (a race with
        # its worker thread) keep them out of the whole-file batch.
        for chunk_number in (8, 2):
            offset = chunk_number * CHUNK
            assert await layer.read(node, offset, 100) == data[offset : offset + 100]
        await trio.testing.wait_all_tasks_blocked()
        after_two_misses = blob.requests
        for chunk_number in (6, 0, 4, 1):
            offset = chunk_number * CHUNK
            assert await layer.read(node, offset, 100) == data[offset : offset + 100]
        if whole_file_max > node.size:
            # The reader's two requests, then the rest in batches; no request afterwards.
            assert after_two_misses >= 3
            assert blob.requests == after_two_misses
        else:
            assert after_two_misses == 2
            assert blob.requests >= 6  # on demand (and read-ahead), as before

    trio.run(main)


def test_learned_prefetch_requests_follow_the_listed_order(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The files are listed in the order the step read them; the batches go out in that
    order, whatever order trio starts tasks in (it varies on purpose)."""
    monkeypatch.setattr(prefetch, "PREFETCH_FIRST_BATCH_BYTES", 1)  # a chunk per request
    monkeypatch.setattr(prefetch, "PREFETCH_BATCH_BYTES", 1)
    monkeypatch.setattr(prefetch, "PREFETCH_CONCURRENCY", 1)
    files = {f"f{number:02}.txt": pseudo_random(CHUNK // 2, number) for number in range(12)}
    built = build_layer(files)
    listed = sorted(files, reverse=True)  # against the layer's order

    async def main(attempt: int) -> None:
        blob = MemoryBlob(built.blob)
        layer = await open_layer(built, blob, tmp_path / str(attempt))
        blob.reset()
        await layer.prefetch_files(listed)
        for name in listed:
            assert await layer.read(node_of(layer, name), 0, CHUNK) == files[name]
        offsets = [ranges[0][0] for ranges in blob.requested]
        expected = [node_of(layer, name).chunks[0].offset for name in listed]
        assert offsets == expected

    for attempt in range(6):
        trio.run(main, attempt)


def test_prefetch_by_file_list_leaves_big_files_to_on_demand_reads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(prefetch, "PREFETCH_FILE_MAX_BYTES", 4 * CHUNK)
    built = build_layer()
    blob = MemoryBlob(built.blob)

    async def main() -> None:
        layer = await open_layer(built, blob, tmp_path)
        small, one = node_of(layer, "small.txt"), node_of(layer, "dir/one.bin")
        chunks, _ = await layer.prefetch_files(["dir/big.bin", "small.txt", "dir/one.bin"])
        assert chunks == len(small.chunks) + len(one.chunks)  # not big.bin's nine

    trio.run(main)


def test_prefetch_by_file_list_fetches_big_files_in_the_places_given(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(prefetch, "PREFETCH_FILE_MAX_BYTES", 4 * CHUNK)
    built = build_layer()
    blob = MemoryBlob(built.blob)
    data = built.files["dir/big.bin"]

    async def main() -> None:
        layer = await open_layer(built, blob, tmp_path)
        big = node_of(layer, "dir/big.bin")
        # Chunk 7, then a range across the end of chunk 2 into chunk 3, then one past
        # the end of the file (nothing there).
        places = {"dir/big.bin": [(7 * CHUNK + 10, 100), (3 * CHUNK - 1, 2), (1 << 40, 10)]}
        chunks, size = await layer.prefetch_files(["dir/big.bin"], places)
        wanted = [big.chunks[7], big.chunks[2], big.chunks[3]]
        assert chunks == 3 and size == sum(c.end - c.offset for c in wanted)
        await trio.testing.wait_all_tasks_blocked()
        requests = blob.requests
        for chunk in wanted:  # served from what the prefetch brought
            start = chunk.chunk_offset
            assert await layer.read(big, start, 10) == data[start : start + 10]
        assert blob.requests == requests
        assert await layer.read(big, 5 * CHUNK, 10) == data[5 * CHUNK : 5 * CHUNK + 10]
        assert blob.requests == requests + 1  # a place not given comes on demand

    trio.run(main)


def test_a_prefetch_starts_with_a_small_batch_so_the_first_files_come_at_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(prefetch, "PREFETCH_CONCURRENCY", 1)
    files = {f"f{number:02}.txt": pseudo_random(CHUNK // 2, number) for number in range(12)}
    built = build_layer(files)
    listed = sorted(files)

    async def main() -> None:
        blob = MemoryBlob(built.blob)
        layer = await open_layer(built, blob, tmp_path)
        chunks = [node_of(layer, name).chunks[0] for name in listed]
        compressed = [chunk.end - chunk.offset for chunk in chunks]
        monkeypatch.setattr(prefetch, "PREFETCH_FIRST_BATCH_BYTES", sum(compressed[:2]))
        monkeypatch.setattr(prefetch, "PREFETCH_BATCH_BYTES", sum(compressed[:5]))
        blob.reset()
        await layer.prefetch_files(listed)
        for name in listed:
            assert await layer.read(node_of(layer, name), 0, CHUNK) == files[name]
        # Two files, then batches of up to five, in the listed order.
        assert sum(size for _, size in blob.requested[0]) == sum(compressed[:2])
        assert sum(size for _, size in blob.requested[1]) == sum(compressed[2:7])

    trio.run(main)
