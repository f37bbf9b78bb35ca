"""Chunks land as their bytes arrive: a reader of a large request's first files does
not wait for its last byte."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio

from lazybuild.errors import RegistryError
from lazybuild.lazyfs import early_region, miss_readahead, prefetch
from tests.unit.lazyfs.test_layer_fakes import CHUNK, MemoryBlob, build_layer, open_layer

PRIORITIZED = ["dir/one.bin", "multi.bin", "small.txt"]


@pytest.fixture(autouse=True)
def one_request_per_region(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(prefetch, "PREFETCH_FIRST_BATCH_BYTES", 64 * CHUNK)
    monkeypatch.setattr(prefetch, "PREFETCH_BATCH_BYTES", 64 * CHUNK)
    monkeypatch.setattr(miss_readahead, "SIBLING_BUDGET_BYTES", 0)
    monkeypatch.setattr(early_region, "PIECE_BYTES", 1024)


@pytest.mark.parametrize("hints", [False, True], ids=["prefetch request", "early region"])
def test_the_first_file_of_a_stalled_region_is_served(tmp_path: Path, *, hints: bool) -> None:
    built = build_layer(prioritized=PRIORITIZED, hints=hints)
    blob = MemoryBlob(built.blob)
    stalled = trio.Event()

    async def main() -> None:
        # Where the first file ends, from a layer opened elsewhere: the stall is set up
        # before the real layer opens, since an early region starts coming at once.
        probe = await open_layer(built, MemoryBlob(built.blob), tmp_path / "probe")
        probed = probe.index.lookup(PRIORITIZED[0])
        assert probed is not None
        end = probed.chunks[-1].end
        if hints:  # the region is kept in pieces: the one holding the file's end comes whole
            end = -(-end // early_region.PIECE_BYTES) * early_region.PIECE_BYTES
        blob.pause_at = (end, stalled)
        layer = await open_layer(built, blob, tmp_path / "real")
        first = layer.index.lookup(PRIORITIZED[0])
        assert first is not None
        await layer.prefetch()
        with trio.fail_after(5):  # the answer stalls after the first file: no deadlock
            assert await layer.read(first, 0, first.size) == built.files[PRIORITIZED[0]]
        requests = blob.requests
        stalled.set()
        for path in PRIORITIZED[1:]:
            node = layer.index.lookup(path)
            assert node is not None
            assert await layer.read(node, 0, node.size) == built.files[path]
        assert blob.requests == requests  # the rest came with the same request
        landmark = layer.index.prefetch_landmark_offset
        assert landmark is not None
        region_requests = [spans for spans in blob.requested if sum(spans[-1]) <= landmark]
        assert len(region_requests) == 1

    trio.run(main)


def test_chunks_before_a_broken_answer_land_and_the_rest_are_fetched_again(
    tmp_path: Path,
) -> None:
    built = build_layer(prioritized=PRIORITIZED)
    blob = MemoryBlob(built.blob)

    async def main() -> None:
        layer = await open_layer(built, blob, tmp_path)
        first = layer.index.lookup(PRIORITIZED[0])
        second = layer.index.lookup(PRIORITIZED[1])
        assert first is not None and second is not None
        broken_at = first.chunks[-1].end
        real_stream = blob.stream_ranges

        async def breaks_off(ranges, arrived):  # type: ignore[no-untyped-def]
            blob.stream_ranges = real_stream  # type: ignore[method-assign]
            await real_stream(
                ranges,
                lambda index, data: (
                    arrived(index, data)
                    if sum(ranges[index]) <= broken_at
                    else (_ for _ in ()).throw(RegistryError("connection reset"))
                ),
            )

        blob.stream_ranges = breaks_off  # type: ignore[method-assign]
        await layer.prefetch()
        assert await layer.read(first, 0, first.size) == built.files[PRIORITIZED[0]]
        before = blob.requests
        assert await layer.read(second, 0, second.size) == built.files[PRIORITIZED[1]]
        assert blob.requests == before + 1  # only what did not come is asked for again
        assert layer.stats.chunks_fetched >= len(first.chunks)

    trio.run(main)
