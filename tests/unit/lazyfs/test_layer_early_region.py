"""The prefetch region fetched alongside the TOC, from the descriptor's hint."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import trio
import trio.testing

from lazybuild.cache.chunkcache import ChunkCache
from lazybuild.errors import DigestMismatchError
from lazybuild.lazyfs import miss_readahead, prefetch
from lazybuild.lazyfs.layer import LazyLayer
from lazybuild.oci import mediatypes
from lazybuild.oci.descriptor import Descriptor
from tests.unit.lazyfs.test_layer_fakes import CHUNK, Built, MemoryBlob, build_layer, open_layer

PRIORITIZED = ["dir/one.bin", "multi.bin", "small.txt"]


@pytest.fixture(autouse=True)
def small_pieces(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(prefetch, "PREFETCH_FIRST_BATCH_BYTES", CHUNK)
    monkeypatch.setattr(prefetch, "PREFETCH_BATCH_BYTES", 2 * CHUNK)
    monkeypatch.setattr(miss_readahead, "SIBLING_BUDGET_BYTES", 0)


def _region(built: Built) -> int:
    return int(built.descriptor.annotations[mediatypes.PREFETCH_REGION_ANNOTATION])


def _with_annotation(built: Built, key: str, value: str) -> Built:
    annotations = {**built.descriptor.annotations, key: value}
    descriptor = Descriptor(
        built.descriptor.media_type, built.descriptor.digest, built.descriptor.size, annotations
    )
    return replace(built, descriptor=descriptor)


def test_region_requests_go_out_with_the_toc_and_serve_the_prioritized_files(
    tmp_path: Path,
) -> None:
    built = build_layer(prioritized=PRIORITIZED, hints=True)
    region = _region(built)
    blob = MemoryBlob(built.blob)
    hold = blob.hold = trio.Event()

    async def main() -> None:
        opened: list[LazyLayer] = []

        async def open_it() -> None:
            opened.append(await open_layer(built, blob, tmp_path))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(open_it)
            with trio.fail_after(10):  # the TOC store is looked at in a thread first
                while not any(spans[0][0] > region for spans in blob.requested):
                    await trio.sleep(0.01)
            # Before the TOC came: the TOC read and the region's first pieces, in flight.
            starts = sorted(spans[0][0] for spans in blob.requested)
            assert starts[0] == 0 and any(start > region for start in starts)
            toc_offset = int(built.descriptor.annotations[mediatypes.TOC_OFFSET_ANNOTATION])
            assert [(toc_offset, built.descriptor.size - toc_offset)] in blob.requested
            hold.set()
        (layer,) = opened
        assert layer.index.prefetch_landmark_offset == region
        await layer.prefetch()
        requested_before_reads = blob.requests
        for path in PRIORITIZED:
            node = layer.index.lookup(path)
            assert node is not None
            assert await layer.read(node, 0, node.size) == built.files[path]
        assert blob.requests == requested_before_reads  # every file came with the region
        # Nothing but the region and the TOC: no chunk fetched twice.
        region_bytes = sum(
            size for spans in blob.requested for start, size in spans if start < region
        )
        assert region_bytes == region
        assert layer.stats.bytes_fetched == blob.bytes_sent

    trio.run(main)


def test_a_layer_whose_toc_is_kept_does_not_fetch_its_region_early(tmp_path: Path) -> None:
    built = build_layer(prioritized=PRIORITIZED, hints=True)

    async def main() -> None:
        await open_layer(built, MemoryBlob(built.blob), tmp_path)  # keeps the TOC
        again = MemoryBlob(built.blob)
        await open_layer(built, again, tmp_path, ChunkCache(tmp_path / "other-cache"))
        assert again.requests == 0  # TOC from the store, the region waits for prefetch()

    trio.run(main)


@pytest.mark.parametrize("factor", [0.5, 1.5])
def test_a_wrong_region_hint_costs_requests_never_content(tmp_path: Path, factor: float) -> None:
    built = build_layer(prioritized=PRIORITIZED, hints=True)
    hinted = min(int(_region(built) * factor), built.descriptor.size - 100)
    built = _with_annotation(built, mediatypes.PREFETCH_REGION_ANNOTATION, str(hinted))
    blob = MemoryBlob(built.blob)

    async def main() -> None:
        layer = await open_layer(built, blob, tmp_path)
        await layer.prefetch()
        for path in [*PRIORITIZED, "dir/big.bin"]:
            node = layer.index.lookup(path)
            assert node is not None
            assert await layer.read(node, 0, node.size) == built.files[path]

    trio.run(main)


def test_corrupt_region_bytes_fail_their_digest_check(tmp_path: Path) -> None:
    built = build_layer(prioritized=PRIORITIZED, hints=True)
    blob = MemoryBlob(built.blob)
    node_offset = 0

    async def main() -> None:
        nonlocal node_offset
        layer = await open_layer(built, MemoryBlob(built.blob), tmp_path / "probe")
        node = layer.index.lookup(PRIORITIZED[0])
        assert node is not None
        node_offset = node.chunks[0].offset
        damaged = bytearray(built.blob)
        damaged[node_offset + 20] ^= 0xFF  # inside the first prioritized file's chunk
        blob.data = bytes(damaged)
        layer = await open_layer(built, blob, tmp_path / "real")
        await layer.prefetch()
        with pytest.raises(DigestMismatchError):
            await layer.read(node, 0, node.size)

    trio.run(main)
