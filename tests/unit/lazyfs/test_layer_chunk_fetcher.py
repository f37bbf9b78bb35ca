"""The parts under LazyLayer on their own: chunk fetching (ChunkFetcher) apart from the
policy of what to fetch besides, and the batching that policy uses."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest
import trio
import trio.testing

from lazybuild.cache.chunkcache import ChunkCache
from lazybuild.errors import DigestMismatchError
from lazybuild.estargz.index import LayerIndex, Node
from lazybuild.lazyfs import prefetch
from lazybuild.lazyfs.chunk_fetcher import ChunkFetcher
from lazybuild.lazyfs.chunk_memory import ChunkMemory
from lazybuild.lazyfs.chunk_site import ChunkSite, LayerSites, batches, sites_of
from lazybuild.lazyfs.layer_stats import LayerStats
from lazybuild.lazyfs.layer_tasks import LayerTasks
from lazybuild.lazyfs.prefetch import prefetch_batches
from tests.unit.estargz.esgz_helpers import open_blob
from tests.unit.lazyfs.test_layer_fakes import Built, MemoryBlob, build_layer


@dataclass
class Parts:
    fetcher: ChunkFetcher
    blob: MemoryBlob
    cache: ChunkCache
    memory: ChunkMemory
    tasks: LayerTasks
    index: LayerIndex

    def node(self, path: str) -> Node:
        node = self.index.lookup(path)
        assert node is not None, path
        return node


def parts(built: Built, tmp: Path, data: bytes | None = None) -> Parts:
    blob = MemoryBlob(built.blob if data is None else data)
    cache, memory = ChunkCache(tmp / "cache"), ChunkMemory()
    tasks = LayerTasks("layer x")
    stats = LayerStats(built.descriptor.digest, built.descriptor.size)
    fetcher = ChunkFetcher(
        blob.as_remote(), cache, memory, stats=stats, tasks=tasks, where="layer x"
    )
    return Parts(fetcher, blob, cache, memory, tasks, open_blob(built.blob).index)


def test_a_load_fetches_what_it_misses_in_one_request_and_keeps_failures_apart(
    tmp_path: Path,
) -> None:
    built = build_layer()
    clean = open_blob(built.blob).index.lookup("multi.bin")
    assert clean is not None
    bad = clean.chunks[2]
    damaged = bytearray(built.blob)
    damaged[bad.offset + 30] ^= 0xFF

    async def main() -> None:
        p = parts(built, tmp_path, bytes(damaged))
        multi = p.node("multi.bin")
        loaded = await p.fetcher.load(sites_of(multi))
        assert p.blob.requests == 1
        assert set(loaded.failures) == {bad.digest}
        assert isinstance(loaded.failures[bad.digest], DigestMismatchError)
        assert set(loaded.contents) == {c.digest for c in multi.chunks} - {bad.digest}
        assert loaded.failure_of(c.digest for c in multi.chunks[:2]) is None
        assert loaded.failure_of(c.digest for c in multi.chunks) is loaded.failures[bad.digest]
        await p.tasks.aclose()  # the disk writes behind the fetch
        assert not p.cache.contains(bad.digest)
        assert all(p.cache.contains(digest) for digest in loaded.contents)

    trio.run(main)


def test_a_load_not_remembered_leaves_the_memory_alone(tmp_path: Path) -> None:
    built = build_layer()

    async def main() -> None:
        p = parts(built, tmp_path)
        big = p.node("dir/big.bin")
        await p.fetcher.load(sites_of(big), remember=False)
        assert len(p.memory) == 0
        await p.tasks.aclose()
        p.blob.reset()
        loaded = await p.fetcher.load(sites_of(big))  # from the disk cache now
        assert p.blob.requests == 0 and not loaded.failures
        assert len(p.memory) == len(big.chunks)

    trio.run(main)


def test_the_miss_handler_claims_what_comes_along_in_a_request_of_its_own(
    tmp_path: Path,
) -> None:
    built = build_layer()

    async def main() -> None:
        p = parts(built, tmp_path)
        one, small = p.node("dir/one.bin"), p.node("small.txt")
        told: list[list[ChunkSite]] = []

        async def along(missing: Sequence[ChunkSite]) -> None:
            told.append(list(missing))
            p.fetcher.fetch_alongside(sites_of(small))

        loaded = await p.fetcher.load(sites_of(one), on_miss=along)
        assert told == [sites_of(one)]
        await p.tasks.aclose()
        assert sorted(p.blob.requested) == sorted(
            [[(c.offset, c.end - c.offset)] for c in [*one.chunks, *small.chunks]]
        )
        assert set(loaded.contents) == {c.digest for c in one.chunks}
        assert p.fetcher.from_memory(small.chunks) is not None  # read-ahead is remembered

    trio.run(main)


def test_readers_of_a_chunk_in_flight_wait_for_it_and_share_its_failure(
    tmp_path: Path,
) -> None:
    built = build_layer()
    clean = open_blob(built.blob).index.lookup("multi.bin")
    assert clean is not None
    damaged = bytearray(built.blob)
    damaged[clean.chunks[0].end - 20] ^= 0x55

    async def main() -> None:
        p = parts(built, tmp_path, bytes(damaged))
        first = p.node("multi.bin").chunks[0]
        p.blob.hold = trio.Event()
        failures: list[object] = []

        async def load() -> None:
            loaded = await p.fetcher.load([ChunkSite(first, "multi.bin")])
            failures.append(type(loaded.failure_of([first.digest])))

        async with trio.open_nursery() as nursery:
            for _ in range(3):
                nursery.start_soon(load)
            await trio.testing.wait_all_tasks_blocked()
            p.blob.hold.set()
        assert failures == [DigestMismatchError] * 3
        assert p.blob.requests == 1

    trio.run(main)


def test_layer_sites_are_each_chunk_once_in_blob_order() -> None:
    built = build_layer()
    index = open_blob(built.blob).index
    layer_sites = LayerSites(index)
    sites = layer_sites.by_offset()
    assert layer_sites.by_offset() is sites  # worked out once
    offsets = [site.chunk.offset for site in sites]
    assert offsets == sorted(offsets)
    digests = [site.digest for site in sites]
    assert len(digests) == len(set(digests))
    exact, dup = index.lookup("exact.bin"), index.lookup("dup-of-exact.bin")
    assert exact is not None and dup is not None
    assert {c.digest for c in exact.chunks} == {c.digest for c in dup.chunks}  # shared


def test_batches_cut_in_order_with_a_small_first_one(monkeypatch: pytest.MonkeyPatch) -> None:
    built = build_layer()
    sites = LayerSites(open_blob(built.blob).index).by_offset()
    sizes = [site.compressed_size for site in sites]
    limit = max(sizes) + 1
    runs = batches(sites, limit)
    assert [site for run in runs for site in run] == sites
    assert all(sum(s.compressed_size for s in run) <= limit for run in runs)
    assert batches(sites, 1) == [[site] for site in sites]  # a chunk over the limit alone
    monkeypatch.setattr(prefetch, "PREFETCH_FIRST_BATCH_BYTES", sizes[0] + sizes[1])
    monkeypatch.setattr(prefetch, "PREFETCH_BATCH_BYTES", 10 * limit)
    first, *rest = prefetch_batches(sites)
    assert first == sites[:2]
    assert [site for run in rest for site in run] == sites[2:]


def test_readers_of_one_missing_chunk_take_the_miss_policy_once(tmp_path: Path) -> None:
    # The kernel sends one read-ahead as several reads at once: the first claims the
    # chunk before the policy runs, and the others wait on its fetch.
    built = build_layer()
    decided: list[list[str]] = []

    async def main() -> None:
        p = parts(built, tmp_path)
        multi = p.node("multi.bin")
        first = sites_of(multi)[:1]

        async def on_miss(missing: Sequence[ChunkSite]) -> None:
            decided.append([site.digest for site in missing])
            await trio.sleep(0)  # the others read the disk, and find it claimed

        results: list[bytes] = []

        async def reader() -> None:
            loaded = await p.fetcher.load(first, on_miss=on_miss)
            results.append(loaded.contents[first[0].digest])

        async with trio.open_nursery() as nursery:
            for _ in range(6):
                nursery.start_soon(reader)
        assert decided == [[first[0].digest]]
        assert p.blob.requests == 1 and len(results) == 6 and len(set(results)) == 1
        await p.tasks.aclose()

    trio.run(main)
