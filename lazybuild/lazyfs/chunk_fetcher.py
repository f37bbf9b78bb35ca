"""Verified chunks of one layer: from a small memory LRU, else the shared disk cache,
else the registry, one fetch per chunk however many readers want it.

What to fetch besides what was asked is not decided here (``miss_readahead``,
``prefetch``, ``background_fetch``): this module fetches what it is given. Chunks a
load has to fetch itself go out in one range request; each is verified as its bytes
arrive (``chunk_verify``, in worker threads, in groups when verifying falls behind),
its readers are woken at once, and it is written to the disk cache behind them. A
chunk that fails its check fails its own readers only; one a broken request did not
bring fails the readers of that request's load, while a fetch nobody waited on
(read-ahead, prefetch) leaves it to be fetched again. Unverified bytes are never handed
out nor cached. Hashing and disk I/O run in worker threads; the trio thread only
books and slices.
"""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Awaitable, Callable, Iterable, Sequence
from contextlib import AbstractAsyncContextManager, nullcontext
from dataclasses import dataclass, field

import trio

from lazybuild.cache.chunkcache import ChunkCache
from lazybuild.errors import LazybuildError
from lazybuild.estargz.index import ChunkRef, Node
from lazybuild.lazyfs.chunk_flight import Flight, Flights
from lazybuild.lazyfs.chunk_memory import ChunkMemory
from lazybuild.lazyfs.chunk_request import ChunkRequests
from lazybuild.lazyfs.chunk_site import ChunkSite, covering
from lazybuild.lazyfs.chunk_verify import verify_group
from lazybuild.lazyfs.concurrency import in_order
from lazybuild.lazyfs.early_region import EarlyRegion
from lazybuild.lazyfs.layer_stats import LayerStats
from lazybuild.lazyfs.layer_tasks import LayerTasks
from lazybuild.registry.blob import RandomAccessBlob

log = logging.getLogger(__name__)

# Chunks read from the disk cache in the event loop rather than a thread (see _from_disk).
INLINE_DISK_READ_BYTES = 256 << 10
_VERIFY_THREADS = trio.CapacityLimiter(max(2, os.cpu_count() or 1))
_STORE_THREADS = trio.CapacityLimiter(2)
# Fetched chunks are verified in groups of about this many compressed bytes or chunks,
# one worker-thread job each: per-chunk jobs cost more in thread hand-offs than in
# inflating and hashing a small file, and a whole request as one job would make its
# first reader wait for the last chunk.
VERIFY_GROUP_BYTES = 512 << 10
VERIFY_GROUP_CHUNKS = 64
VERIFY_JOBS_PER_REQUEST = 2

MissHandler = Callable[[Sequence[ChunkSite]], Awaitable[None]]
"""Told which chunks a load is about to fetch itself, before it claims them, so that
what should come along can be claimed first (and go out next to it)."""


@dataclass
class Loaded:
    """What a load got: verified contents and failures, both by digest."""

    contents: dict[str, bytes] = field(default_factory=dict)
    failures: dict[str, LazybuildError] = field(default_factory=dict)

    def failure_of(self, digests: Iterable[str]) -> LazybuildError | None:
        """The failure of the first of the chunks ``digests`` that failed, if any did."""
        return next((f for d in digests if (f := self.failures.get(d)) is not None), None)


class ChunkFetcher:
    def __init__(
        self,
        blob: RandomAccessBlob,
        cache: ChunkCache,
        memory: ChunkMemory,
        *,
        stats: LayerStats,
        tasks: LayerTasks,
        where: str,
        foreground: Callable[[], AbstractAsyncContextManager[object]] | None = None,
    ) -> None:
        """``foreground`` brackets every request but the background fetch's
        (``priority.ForegroundGate.foreground``): background fetching yields to the link's
        use by readers, not to reads the cache answers."""
        self.stats = stats
        self._foreground = foreground
        self._cache = cache
        self._memory = memory
        self._tasks = tasks
        self._where = where
        self._requests = ChunkRequests(blob, stats, where)
        self._flights = Flights()
        self._not_on_disk: set[str] = set()  # warm-up misses, until fetched

    # -- what is at hand, without fetching -------------------------------------

    def in_memory(self, digest: str) -> bool:
        return digest in self._memory

    def in_flight(self, digest: str) -> bool:
        return self._flights.get(digest) is not None

    def from_memory(self, chunks: Sequence[ChunkRef]) -> dict[str, bytes] | None:
        """All of ``chunks`` from the memory LRU, or None (the hot path: no thread, no await)."""
        found = {}
        for chunk in chunks:
            data = self._memory.get(chunk.digest)
            if data is None:
                return None
            found[chunk.digest] = data
        self.stats.cache_hits += len(chunks)
        return found

    def bytes_in_memory(self, node: Node, offset: int, size: int) -> bytes | None:
        """Bytes of ``node`` from chunks in the memory LRU (short at the end of the file),
        or None when one of them is not there."""
        end = min(node.size, offset + size)
        if offset >= end:
            return b""
        first, last = covering(node.chunks, offset, end)
        pieces = []
        for chunk in node.chunks[first:last]:
            data = self._memory.get(chunk.digest)
            if data is None:
                return None
            start = max(offset, chunk.chunk_offset) - chunk.chunk_offset
            stop = min(end, chunk.chunk_offset + chunk.size) - chunk.chunk_offset
            pieces.append(data[start:stop])
        return b"".join(pieces)

    async def cached_digests(self, sites: Sequence[ChunkSite]) -> set[str]:
        """The digests of ``sites`` in the disk cache (thousands of stats: in a thread)."""
        return await trio.to_thread.run_sync(self._on_disk, sites)

    async def uncached(self, sites: Sequence[ChunkSite]) -> list[ChunkSite]:
        """Those of ``sites`` in neither memory nor the disk cache."""
        cached = await self.cached_digests(sites)
        return [s for s in sites if s.digest not in cached and s.digest not in self._memory]

    async def to_fetch(self, sites: Sequence[ChunkSite]) -> list[ChunkSite]:
        """Those of ``sites`` in neither memory nor the disk cache, nor in flight. The
        flights are looked at after the disk: a claim made meanwhile counts."""
        uncached = await self.uncached(sites)
        return [site for site in uncached if self._flights.get(site.digest) is None]

    # -- loading what a reader waits for ---------------------------------------

    async def load(
        self,
        sites: Sequence[ChunkSite],
        *,
        remember: bool = True,
        on_miss: MissHandler | None = None,
        background: bool = False,
    ) -> Loaded:
        """Verified contents of ``sites``: disk cache, else a shared or own fetch (all of
        the own in one request), with each chunk that could not be had as a failure;
        ``remember`` keeps them in the memory LRU; ``background``: the request is not
        foreground work (see ``__init__``)."""
        loaded = Loaded()
        unique = list({site.digest: site for site in sites}.values())
        while unique:
            # Chunks someone is already loading are waited for, not read or fetched again.
            theirs = self._in_flight(unique)
            rest = [site for site in unique if self._flights.get(site.digest) is None]
            if rest:
                from_disk = await self._from_disk(rest)
                self.stats.cache_hits += len(from_disk)
                if remember:
                    for digest, data in from_disk.items():
                        self._memory.put(digest, data)
                loaded.contents.update(from_disk)
                missing = [site for site in rest if site.digest not in loaded.contents]
                theirs += self._in_flight(missing)  # claimed while we read the disk
                mine = [site for site in missing if self._flights.get(site.digest) is None]
                if mine:
                    # Claimed before the miss policy runs: the kernel sends one read-ahead
                    # as several reads at once, and the others must wait on this fetch
                    # rather than each take the miss policy's decision again.
                    with self._flights.claim(site.digest for site in mine) as flights:
                        if on_miss is not None:
                            await on_miss(mine)
                        await self._fetch_claimed(
                            flights, mine, loaded, remember=remember, background=background
                        )
            unique = []
            for site, flight in theirs:
                await flight.done.wait()
                if flight.error is not None:
                    # A copy: the same exception object raised in several tasks would
                    # pile their tracebacks onto each other.
                    loaded.failures[site.digest] = type(flight.error)(str(flight.error))
                elif flight.content is None:
                    unique.append(site)  # its loader was cancelled or missed: try ourselves
                else:
                    loaded.contents[site.digest] = flight.content
        return loaded

    def warm(self, chunk: ChunkRef) -> None:
        """Start loading a chunk from the disk cache into memory, so that a sequential
        reader overlaps the next chunk's disk read and integrity check with slicing
        this one. The flight is registered now, so the reader waits for it instead of
        loading the chunk a second time."""
        digest = chunk.digest
        if digest in self._memory or digest in self._not_on_disk or self._flights.get(digest):
            return
        claimed = self._flights.register([digest])
        self._tasks.start_soon(self._warm, digest, claimed)

    async def _warm(self, digest: str, claimed: dict[str, Flight]) -> None:
        try:
            with self._flights.flying(claimed) as flights:
                data = await trio.to_thread.run_sync(self._cache.get, digest)
                if data is None:
                    self._not_on_disk.add(digest)  # a miss: the reader fetches it itself
                    return
                self.stats.cache_hits += 1
                self._memory.put(digest, data)
                flights[digest].content = data
        except Exception:  # only an optimisation: the reader will load the chunk itself
            log.debug("%s: warming chunk %s failed", self._where, digest, exc_info=True)

    # -- fetches nobody waits on yet -------------------------------------------

    def fetch_alongside(self, sites: Sequence[ChunkSite]) -> None:
        """Fetch chunks in a request of their own, next to a reader's: the reader waits
        for its own chunks only, not for this transfer, and keeps computing while these
        arrive. The flights are registered now, so a reader of one of these chunks
        waits for this request instead of fetching it again."""
        claimed = self._flights.register(site.digest for site in sites)
        self._tasks.start_soon(
            functools.partial(self._fetch_optional, remember=True), sites, claimed
        )

    def fetch_in_batches(
        self,
        batches: Sequence[Sequence[ChunkSite]],
        concurrency: int,
        source: EarlyRegion | None = None,
    ) -> None:
        """Fetch ``batches``, a request each, ``concurrency`` at once, started in their
        order, from ``source`` where it holds them; flights registered now (see
        ``fetch_alongside``)."""
        claimed = [
            (batch, self._flights.register(site.digest for site in batch)) for batch in batches
        ]
        self._tasks.start_soon(self._fetch_batches, claimed, concurrency, source)

    async def _fetch_batches(
        self,
        batches: list[tuple[Sequence[ChunkSite], dict[str, Flight]]],
        concurrency: int,
        source: EarlyRegion | None,
    ) -> None:
        # Batches never started still land, so nobody waits on them forever.
        pending = iter(batches)

        async def fetch(batch: tuple[Sequence[ChunkSite], dict[str, Flight]]) -> None:
            await self._fetch_optional(*batch, source, remember=False)

        try:
            await in_order(pending, concurrency, fetch)
        finally:
            for _, claimed in pending:
                with self._flights.flying(claimed):
                    pass
            if source is not None:
                source.cancel()  # every batch it could serve is done: free its bytes

    async def _fetch_optional(
        self,
        sites: Sequence[ChunkSite],
        claimed: dict[str, Flight],
        source: EarlyRegion | None = None,
        *,
        remember: bool,
    ) -> None:
        """However this ends, the flights land. A chunk that did not come (the request
        failed, or broke off before it) lands empty, so a reader waiting for it
        fetches it itself; one that came wrong fails its readers."""
        with self._flights.flying(claimed) as flights:
            try:
                fetched = await self._fetch_into(flights, sites, source, remember=remember)
            except Exception:  # only a head start: see above
                log.debug("%s: read-ahead fetch failed", self._where, exc_info=True)
                return
            if fetched.failures:
                log.debug(
                    "%s: read-ahead fetch: %d chunk(s) failed", self._where, len(fetched.failures)
                )

    # -- fetching --------------------------------------------------------------

    async def _fetch_claimed(
        self,
        flights: dict[str, Flight],
        sites: Sequence[ChunkSite],
        loaded: Loaded,
        *,
        remember: bool,
        background: bool,
    ) -> None:
        """Fetch ``sites`` (their ``flights`` claimed) in one request into ``loaded``;
        every chunk's flight gets its content or its failure."""
        fetched = await self._fetch_into(flights, sites, remember=remember, background=background)
        for digest, failure in fetched.failures.items():
            flights[digest].error = failure
        loaded.contents.update(fetched.contents)
        loaded.failures.update(fetched.failures)

    async def _fetch_into(
        self,
        flights: dict[str, Flight],
        sites: Sequence[ChunkSite],
        source: EarlyRegion | None = None,
        *,
        remember: bool,
        background: bool = False,
    ) -> Loaded:
        """Fetch ``sites`` in one request and land each chunk as its bytes come in: a
        reader of the first chunks of a large request does not wait for its last.
        The chunks a failed request did not bring fail with its error."""
        fetched = Loaded()
        send, receive = trio.open_memory_channel[tuple[ChunkSite, bytes]](float("inf"))

        async def lander(arrivals: trio.MemoryReceiveChannel[tuple[ChunkSite, bytes]]) -> None:
            async with arrivals:
                async for first in arrivals:
                    verified, failed = await self._land(
                        _take_arrived(arrivals, first), flights, remember=remember
                    )
                    fetched.contents.update(verified)
                    fetched.failures.update(failed)

        request_failure: LazybuildError | None = None
        async with trio.open_nursery() as nursery:
            for _ in range(VERIFY_JOBS_PER_REQUEST):
                nursery.start_soon(lander, receive.clone())
            receive.close()
            bracket = (
                nullcontext() if background or self._foreground is None else self._foreground()
            )
            with send:
                try:
                    async with bracket:
                        await self._requests.stream(
                            sites,
                            lambda index, data: send.send_nowait((sites[index], data)),
                            source,
                        )
                except LazybuildError as exc:
                    request_failure = exc  # what came before it still lands
        self.stats.chunks_fetched += len(fetched.contents)
        if request_failure is not None:
            for site in sites:
                if site.digest not in fetched.contents:
                    fetched.failures.setdefault(site.digest, request_failure)
        return fetched

    async def _land(
        self,
        group: Sequence[tuple[ChunkSite, bytes]],
        flights: dict[str, Flight],
        *,
        remember: bool,
    ) -> tuple[dict[str, bytes], dict[str, LazybuildError]]:
        """Verify one group of fetched chunks in a worker thread and wake their waiters
        at once: a reader waits for its own chunks, not for the rest of a prefetch of
        thousands, nor for the disk (the cache holds them in memory until written)."""
        verified, failed = await trio.to_thread.run_sync(
            verify_group, self._where, group, limiter=_VERIFY_THREADS
        )
        if verified:
            self._cache.hold(verified)
            self._not_on_disk.difference_update(verified)
            self._tasks.start_soon(self._store, list(verified))
        for digest, content in verified.items():
            flights[digest].content = content
            flights[digest].done.set()
            if remember:
                self._memory.put(digest, content)
        for digest, failure in failed.items():
            flights[digest].error = failure
            flights[digest].done.set()
        return verified, failed

    async def _store(self, digests: list[str]) -> None:
        # Shielded: a layer closing, or a filesystem shutting down, still writes what it
        # fetched.
        with trio.CancelScope(shield=True):
            try:
                await trio.to_thread.run_sync(
                    self._cache.write_held, digests, limiter=_STORE_THREADS
                )
            except OSError as exc:  # a full or read-only cache must not fail the read
                log.warning("%s: cannot cache %d chunk(s): %s", self._where, len(digests), exc)

    # -- the disk cache --------------------------------------------------------

    async def _from_disk(self, sites: Sequence[ChunkSite]) -> dict[str, bytes]:
        """Contents of ``sites`` in the disk cache. A few small chunks are read right here:
        for a page-cache read of some KiB, the hop to a worker thread and back costs
        more, and much more while a build keeps every core busy (a Go build's thousands
        of source files). Larger reads go to a thread, so requests keep being served."""
        if sum(site.chunk.size for site in sites) <= INLINE_DISK_READ_BYTES:
            return self._read_cached(sites)
        return await trio.to_thread.run_sync(self._read_cached, sites)

    def _read_cached(self, sites: Sequence[ChunkSite]) -> dict[str, bytes]:
        """(worker thread, or the event loop for a few small chunks)"""
        found = {}
        for site in sites:
            data = self._cache.get(site.digest)
            if data is not None:
                found[site.digest] = data
        return found

    def _on_disk(self, sites: Sequence[ChunkSite]) -> set[str]:
        """(worker thread)"""
        return {site.digest for site in sites if self._cache.contains(site.digest)}

    def _in_flight(self, sites: Sequence[ChunkSite]) -> list[tuple[ChunkSite, Flight]]:
        return [
            (site, flight)
            for site in sites
            if (flight := self._flights.get(site.digest)) is not None
        ]


def _take_arrived(
    arrivals: trio.MemoryReceiveChannel[tuple[ChunkSite, bytes]], first: tuple[ChunkSite, bytes]
) -> list[tuple[ChunkSite, bytes]]:
    """``first`` and the chunks that arrived behind it, up to a verify group: chunks are
    landed as they come when the network is the bottleneck, in larger groups (fewer
    thread hand-offs) when verifying is."""
    group = [first]
    size = len(first[1])
    while size < VERIFY_GROUP_BYTES and len(group) < VERIFY_GROUP_CHUNKS:
        try:
            item = arrivals.receive_nowait()
        except (trio.WouldBlock, trio.EndOfChannel):
            break
        group.append(item)
        size += len(item[1])
    return group
