"""LazyLayer.prefetch and fetch_all: request shapes, caching, yielding to foreground reads."""

from __future__ import annotations

from collections.abc import Awaitable
from pathlib import Path

import pytest
import trio
import trio.testing

from lazybuild.lazyfs import background_fetch, miss_readahead, prefetch
from lazybuild.lazyfs.priority import ForegroundGate
from tests.unit.lazyfs.test_layer_fakes import CHUNK, MemoryBlob, build_layer, open_layer


@pytest.fixture(autouse=True)
def no_sibling_fetches(monkeypatch: pytest.MonkeyPatch) -> None:
    """These tests count the requests of one mechanism at a time; the files that come
    along on a directory's first miss have tests of their own (test_layer_siblings)."""
    monkeypatch.setattr(miss_readahead, "SIBLING_BUDGET_BYTES", 0)


def test_prefetch_fetches_the_prioritized_region_in_order_without_waiting(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(prefetch, "PREFETCH_FIRST_BATCH_BYTES", 2 * CHUNK)
    monkeypatch.setattr(prefetch, "PREFETCH_BATCH_BYTES", 2 * CHUNK)
    monkeypatch.setattr(prefetch, "PREFETCH_CONCURRENCY", 1)
    prioritized = ["dir/one.bin", "multi.bin", "small.txt"]
    built = build_layer(prioritized=prioritized)
    blob = MemoryBlob(built.blob)

    async def main() -> None:
        layer = await open_layer(built, blob, tmp_path)
        landmark = layer.index.prefetch_landmark_offset
        assert landmark is not None
        nodes = [layer.index.lookup(path) for path in prioritized]
        chunks = [chunk for node in nodes if node is not None for chunk in node.chunks]
        region = sum(chunk.end - chunk.offset for chunk in chunks)
        blob.reset()
        blob.hold = trio.Event()
        assert await layer.prefetch() == region  # scheduled, not waited for
        assert layer.stats.prefetch_bytes == region
        got: list[bytes] = []
        async with trio.open_nursery() as nursery:
            for node in nodes:
                assert node is not None
                nursery.start_soon(_append, got, layer.read(node, 0, node.size))
            await trio.testing.wait_all_tasks_blocked()
            assert blob.requests == 1  # the first batch only: one at a time here
            blob.hold.set()
        assert sorted(got) == sorted(built.files[path] for path in prioritized)
        # Batches in region order, within it, none from the readers.
        starts = [spans[0][0] for spans in blob.requested]
        assert starts == sorted(starts) and starts[0] == chunks[0].offset
        assert all(start + size <= landmark for spans in blob.requested for start, size in spans)
        assert 1 < blob.requests <= len(chunks)
        blob.reset()
        other = layer.index.lookup("dir/big.bin")
        assert other is not None
        await layer.read(other, 0, 10)
        assert blob.requests == 1
        blob.reset()
        assert await layer.prefetch() == 0  # all cached now
        assert blob.requests == 0

    trio.run(main)


async def _append(out: list[bytes], read: Awaitable[bytes]) -> None:
    out.append(await read)


def test_no_prefetch_landmark_fetches_nothing(tmp_path: Path) -> None:
    built = build_layer()
    blob = MemoryBlob(built.blob)

    async def main() -> None:
        layer = await open_layer(built, blob, tmp_path)
        assert layer.index.no_prefetch
        blob.reset()
        assert await layer.prefetch() == 0
        assert blob.requests == 0

    trio.run(main)


def test_fetch_all_caches_every_chunk_in_batches(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(background_fetch, "BACKGROUND_BATCH_BYTES", 4 * CHUNK)
    built = build_layer()
    blob = MemoryBlob(built.blob)

    async def main() -> None:
        layer = await open_layer(built, blob, tmp_path)
        blob.reset()
        await layer.fetch_all(ForegroundGate(quiet_period=0))
        assert 1 < blob.requests < 10
        batch_sizes = [sum(n for _, n in spans) for spans in blob.requested]
        assert max(batch_sizes) <= 4 * CHUNK + 4096
        blob.reset()
        for path, data in built.files.items():
            node = layer.index.lookup(path)
            assert node is not None
            assert await layer.read(node, 0, len(data)) == data
        assert blob.requests == 0
        await layer.fetch_all(ForegroundGate(quiet_period=0))
        assert blob.requests == 0

    trio.run(main)


def test_fetch_all_waits_for_quiet_and_yields_to_foreground(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(background_fetch, "BACKGROUND_BATCH_BYTES", 2 * CHUNK)
    built = build_layer()
    blob = MemoryBlob(built.blob)
    quiet = 0.3

    async def main() -> None:
        layer = await open_layer(built, blob, tmp_path)
        gate = ForegroundGate(quiet_period=quiet)
        small = layer.index.lookup("small.txt")
        assert small is not None
        blob.reset()
        async with trio.open_nursery() as nursery:
            async with gate.foreground():
                nursery.start_soon(layer.fetch_all, gate)
                await trio.sleep(0.1)
                assert blob.requests == 0  # foreground active: background waits
            started = trio.current_time()
            await trio.sleep(quiet / 2)
            assert blob.requests == 0  # not quiet long enough yet
            while blob.requests == 0:
                await trio.sleep(0.01)
            assert trio.current_time() - started >= quiet * 0.9
            # A background request in flight is cancelled by a foreground read.
            blob.hold = trio.Event()
            while not blob.hold.statistics().tasks_waiting:
                await trio.sleep(0.005)
            held = blob.requests
            async with gate.foreground():
                blob.hold.set()
                blob.hold = None
                await trio.sleep(0.05)
                assert blob.requests == held  # nothing new while the foreground runs
                assert await layer.read(small, 0, 100) == built.files["small.txt"]
        for path, data in built.files.items():
            node = layer.index.lookup(path)
            assert node is not None
            before = blob.requests
            assert await layer.read(node, 0, len(data)) == data
            assert blob.requests == before

    trio.run(main)
