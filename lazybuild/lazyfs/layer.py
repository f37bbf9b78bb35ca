"""One eStargz layer served lazily: verified TOC, on-demand chunks, prefetch, background fetch.

Every byte handed out has been checked: the TOC against the descriptor's
``toc.digest`` annotation before ``open`` returns, each chunk against its
``chunkDigest`` before it is cached or returned. Chunks come from a small memory
LRU, else the shared disk cache (``ChunkCache``), else the registry, in one range
request for all the chunks a read is missing. Decompression, hashing and disk I/O
run in worker threads; the trio thread only books and slices.
"""

from __future__ import annotations

import bisect
import logging
import os
import posixpath
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TypeVar

import trio

from lazybuild.cache.chunkcache import ChunkCache
from lazybuild.errors import DigestMismatchError, FormatError, LazybuildError, RegistryError
from lazybuild.estargz.hints import prefetch_region_hint
from lazybuild.estargz.index import ChunkRef, LayerIndex, Node
from lazybuild.estargz.reader import decompress_chunk
from lazybuild.estargz.toc import PREFETCH_FILE_MAX_BYTES
from lazybuild.lazyfs.chunk_flight import Flight, Flights
from lazybuild.lazyfs.chunk_memory import ChunkMemory
from lazybuild.lazyfs.concurrency import in_order
from lazybuild.lazyfs.early_region import EarlyRegion
from lazybuild.lazyfs.elfdeps import candidate_paths, elf_dependencies, is_elf
from lazybuild.lazyfs.fetchtrace import trace_fetch
from lazybuild.lazyfs.layer_stats import LayerStats
from lazybuild.lazyfs.layer_toc import TocStore, open_index
from lazybuild.lazyfs.layerset import LayerSet
from lazybuild.lazyfs.priority import ForegroundGate
from lazybuild.lazyfs.readwindow import NeighbourWindow
from lazybuild.oci.descriptor import Descriptor
from lazybuild.oci.mediatypes import TOC_DIGEST_ANNOTATION
from lazybuild.registry.blob import RemoteBlob
from lazybuild.statedir import default_state_dir

__all__ = ["LayerStats", "LazyLayer"]

log = logging.getLogger(__name__)
T = TypeVar("T")

# Compressed bytes per background request: large enough that request overhead is
# small, small enough that a batch cancelled by a foreground read wastes little.
BACKGROUND_BATCH_BYTES = 16 << 20
# Prefetches (the prioritized region, learned reads, a published record, the rest of a
# file): requests of at most this many compressed bytes, this many at once, in the order
# the files will be read, so the first files arrive first.
PREFETCH_BATCH_BYTES = 2 << 20
PREFETCH_CONCURRENCY = 3
# The first batch is small: it holds the first files the workload reads (its binary,
# /etc/passwd), which then arrive after a round trip instead of sharing the link with
# megabytes of later files (a JVM's first 2 MiB batch took 0.35 s to land, and the
# container's start waited for it).
PREFETCH_FIRST_BATCH_BYTES = 256 << 10
# A file missed twice is fetched whole up to this size (uncompressed): see _rest_of_files.
WHOLE_FILE_MAX_BYTES = 64 << 20
# Chunks of a file loaded from the disk cache ahead of a sequential reader, so disk
# reads and integrity checks overlap with serving the current chunk (measured on a
# 500 MB file: 1 ahead ~530 MB/s, 2 ~720 MB/s, 3 ~780 MB/s).
READ_AHEAD_CHUNKS = 3
# Chunks read from the disk cache in the event loop rather than a thread (see _from_disk).
INLINE_DISK_READ_BYTES = 256 << 10
# The first miss in a directory also fetches its nearest small files (see _siblings).
SIBLING_FILE_MAX_BYTES = 256 << 10  # uncompressed size of a file that comes along
SIBLING_BUDGET_BYTES = 256 << 10  # compressed bytes per directory
_VERIFY_THREADS = trio.CapacityLimiter(max(2, os.cpu_count() or 1))
_STORE_THREADS = trio.CapacityLimiter(2)
# Fetched chunks are verified in groups of about this many compressed bytes or chunks,
# one worker-thread job each: per-chunk jobs cost more in thread hand-offs than in
# inflating and hashing a small file, and a whole request as one job would make its
# first reader wait for the last chunk.
VERIFY_GROUP_BYTES = 512 << 10
VERIFY_GROUP_CHUNKS = 64
VERIFY_JOBS_PER_REQUEST = 2


@dataclass(frozen=True)
class _Site:
    """A chunk and the file it belongs to (for error messages)."""

    chunk: ChunkRef
    file: str

    @property
    def digest(self) -> str:
        return self.chunk.digest


class LazyLayer:
    def __init__(
        self,
        blob: RemoteBlob,
        descriptor: Descriptor,
        index: LayerIndex,
        cache: ChunkCache,
        memory: ChunkMemory,
        *,
        layers: LayerSet | None = None,
        stats: LayerStats | None = None,
        early_region: EarlyRegion | None = None,
    ) -> None:
        self.digest = descriptor.digest
        self.descriptor = descriptor
        self.index = index
        self.stats = stats or LayerStats(descriptor.digest, descriptor.size)
        self._early_region = early_region  # until prefetch takes it
        self._blob = blob
        self._cache = cache
        self._memory = memory
        self._flights = Flights()
        self._where = f"layer {descriptor.digest}"
        self._sites: list[_Site] | None = None
        self._by_offset: list[_Site] | None = None
        self._not_on_disk: set[str] = set()  # read-ahead misses, until fetched
        self._window = NeighbourWindow()
        self._file_misses: dict[str, set[str]] = {}  # chunks a read had to fetch, per file
        self._directories_missed: set[str] = set()
        self._elf_done: set[str] = set()  # files whose libraries were looked for
        # Where libraries are looked for: the layers of this layer's images, or just this.
        self._layers = layers if layers is not None else LayerSet()

    @classmethod
    async def open(
        cls,
        blob: RemoteBlob,
        descriptor: Descriptor,
        cache: ChunkCache,
        *,
        state_dir: Path | None = None,
        memory: ChunkMemory | None = None,
        layers: LayerSet | None = None,
    ) -> LazyLayer:
        """Fetch and verify the TOC (FormatError without a toc.digest annotation,
        DigestMismatchError when it does not match). ``memory`` may be shared by layers;
        ``layers`` is where programs read from this layer find their libraries.

        A layer seen for the first time whose descriptor gives its prefetch region's
        size starts fetching the region meanwhile (see ``early_region``)."""
        where = f"layer {descriptor.digest}"
        tocs = TocStore(state_dir if state_dir is not None else default_state_dir())
        stats = LayerStats(descriptor.digest, descriptor.size)
        early = _early_region(blob, descriptor, tocs, stats, where)
        started = time.perf_counter()
        try:
            opened = await open_index(blob, descriptor, tocs, where)
        except BaseException:
            if early is not None:
                early.cancel()
            raise
        layer = cls(
            blob,
            descriptor,
            opened.index,
            cache,
            memory or ChunkMemory(),
            layers=layers,
            stats=stats,
            early_region=early,
        )
        layer.stats.requests += opened.requests
        layer.stats.bytes_fetched += opened.bytes_fetched
        layer.stats.fetch_seconds += time.perf_counter() - started
        return layer

    # -- foreground reads ------------------------------------------------------

    async def read(self, node: Node, offset: int, size: int) -> bytes:
        """Bytes [offset, offset+size) of regular file ``node``, short at its end."""
        if node.type != "reg":
            raise ValueError(f"{node.name!r} is a {node.type}, not a regular file")
        if offset < 0 or size < 0:
            raise ValueError(f"bad read ({offset}, {size}) of {node.name!r}")
        end = min(node.size, offset + size)
        if offset >= end:
            return b""
        chunks = node.chunks
        first, last = _covering(chunks, offset, end)
        covering = chunks[first:last]
        contents = self._from_memory(covering)
        if contents is None:
            contents = await self._load([_Site(c, node.name) for c in covering])
        for ahead in chunks[last : last + READ_AHEAD_CHUNKS]:
            self._read_ahead(ahead)
        if node.name not in self._elf_done:
            self._note_libraries(node)
        if (
            len(covering) == 1
            and offset == covering[0].chunk_offset
            and end - offset == len(whole := contents[covering[0].digest])
        ):
            return whole  # a read of exactly one chunk: no copy
        pieces = [
            memoryview(contents[chunk.digest])[
                max(0, offset - chunk.chunk_offset) : min(chunk.size, end - chunk.chunk_offset)
            ]
            for chunk in covering
        ]
        return bytes(pieces[0]) if len(pieces) == 1 else b"".join(pieces)

    def _from_memory(self, chunks: Sequence[ChunkRef]) -> dict[str, bytes] | None:
        """All of ``chunks`` from the memory LRU, or None (the hot path: no thread, no await)."""
        found = {}
        for chunk in chunks:
            data = self._memory.get(chunk.digest)
            if data is None:
                return None
            found[chunk.digest] = data
        self.stats.cache_hits += len(chunks)
        return found

    # -- libraries of programs ----------------------------------------------------

    def _note_libraries(self, node: Node) -> None:
        """Once an ELF file's dynamic section has arrived, fetch its loader and libraries
        (found in the layers of its image) in the background: the loader opens them one
        after the other, a round trip each. Libraries read later get the same treatment, so their
        own dependencies follow."""
        head = self._bytes_in_memory(node, 0, 4)
        if head is None:
            return  # its first chunk is not at hand: maybe on a later read
        if not is_elf(head):
            self._elf_done.add(node.name)
            return
        try:
            dependencies = elf_dependencies(partial(self._bytes_in_memory, node))
        except ValueError:
            self._elf_done.add(node.name)
            return
        if dependencies is None:
            return  # the dynamic section is still to come (the loader reads it next)
        self._elf_done.add(node.name)
        wanted: dict[LazyLayer, list[_Site]] = {}
        for paths in candidate_paths(node.name, dependencies):
            found = next((hit for path in paths if (hit := self._layers.resolve(path, self))), None)
            if found is None or found[1].size > WHOLE_FILE_MAX_BYTES:
                continue
            layer, library = found
            wanted.setdefault(layer, []).extend(_Site(c, library.name) for c in library.chunks)
        for layer, sites in wanted.items():
            trio.lowlevel.spawn_system_task(layer._fetch_uncached, sites)

    def _bytes_in_memory(self, node: Node, offset: int, size: int) -> bytes | None:
        """Bytes of ``node`` from chunks in the memory LRU (short at the end of the file),
        or None when one of them is not there."""
        end = min(node.size, offset + size)
        if offset >= end:
            return b""
        first, last = _covering(node.chunks, offset, end)
        pieces = []
        for chunk in node.chunks[first:last]:
            data = self._memory.get(chunk.digest)
            if data is None:
                return None
            start = max(offset, chunk.chunk_offset) - chunk.chunk_offset
            stop = min(end, chunk.chunk_offset + chunk.size) - chunk.chunk_offset
            pieces.append(data[start:stop])
        return b"".join(pieces)

    async def _fetch_uncached(self, sites: Sequence[_Site]) -> None:
        try:
            pending = await self._to_fetch(sites)
        except Exception:  # only a hint, like read-ahead
            log.debug("%s: looking for cached library chunks failed", self._where, exc_info=True)
            return
        if pending:
            self._fetch_in_batches(pending)

    def _read_ahead(self, chunk: ChunkRef) -> None:
        """Start loading the chunk after a read from the disk cache into memory, so that a
        sequential reader overlaps the next chunk's disk read and integrity check with
        slicing this one. The flight is registered now, so the reader waits for it
        instead of loading the chunk a second time."""
        digest = chunk.digest
        if digest in self._memory or digest in self._not_on_disk or self._flights.get(digest):
            return
        claimed = self._flights.register([digest])
        trio.lowlevel.spawn_system_task(self._load_ahead, digest, claimed)

    async def _load_ahead(self, digest: str, claimed: dict[str, Flight]) -> None:
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
            log.debug("%s: read-ahead of chunk %s failed", self._where, digest, exc_info=True)

    # -- prefetch and background fetch -----------------------------------------

    async def prefetch(self) -> int:
        """Start fetching the prioritized region [0, landmark) and return at once with the
        compressed bytes scheduled (0 without a prefetch landmark or when cached).

        The region goes in batches, a few at a time, in its order, which is the order
        the workload read its files in. The flights are registered before this returns,
        so a read of a file on its way waits for its batch; the workload starts
        meanwhile, and its first files come first, where one request for the whole
        region made it wait for the last byte (a second for a JVM's 12 MB)."""
        early, self._early_region = self._early_region, None
        landmark = self.index.prefetch_landmark_offset
        missing = []
        if landmark is not None and not self.index.no_prefetch and landmark > 0:
            region = [site for site in self._sites_by_offset() if site.chunk.end <= landmark]
            missing = await self._to_fetch(region)
        if not missing:
            if early is not None:
                early.cancel()
            return 0
        self._fetch_in_batches(missing, source=early)
        scheduled = sum(site.chunk.end - site.chunk.offset for site in missing)
        self.stats.prefetch_bytes += scheduled
        return scheduled

    async def prefetch_files(
        self, paths: Sequence[str], ranges: Mapping[str, Sequence[tuple[int, int]]] | None = None
    ) -> tuple[int, int]:
        """Start fetching the chunks of ``paths`` (files a step read last time, or that an
        image's workload record lists) that are neither cached nor being fetched, in
        batches in the given order; returns the chunks and compressed bytes not cached
        yet (those on their way already included: asked for twice, they count twice).
        A file over ``PREFETCH_FILE_MAX_BYTES`` is mostly read in places: only the
        chunks under its ``ranges`` (offset, length) come, and none without any. The
        flights are registered before this returns, so the step's reads wait for them
        instead of fetching again."""
        sites: list[_Site] = []
        seen: set[str] = set()
        for path in paths:
            node = self.index.lookup(path)
            if node is None or node.type != "reg":
                continue  # gone from this version of the layer: nothing to fetch
            chunks = node.chunks
            if node.size > PREFETCH_FILE_MAX_BYTES:
                chunks = _chunks_under(node, (ranges or {}).get(path, ()))
            for chunk in chunks:
                if chunk.digest not in seen:
                    seen.add(chunk.digest)
                    sites.append(_Site(chunk, node.name))
        uncached = await self._uncached(sites)
        missing = [site for site in uncached if self._flights.get(site.digest) is None]
        if missing:
            self._fetch_in_batches(missing)
        return len(uncached), sum(site.chunk.end - site.chunk.offset for site in uncached)

    async def _fetch_batches(
        self,
        batches: list[tuple[list[_Site], dict[str, Flight]]],
        source: EarlyRegion | None,
    ) -> None:
        """Fetch ``batches`` a few at a time, in their order (the order files will be
        read in), from ``source`` where it has them. Batches never started still land,
        so nobody waits on them forever."""
        pending = iter(batches)

        async def fetch(batch: tuple[list[_Site], dict[str, Flight]]) -> None:
            await self._fetch_optional(*batch, False, source)

        try:
            await in_order(pending, PREFETCH_CONCURRENCY, fetch)
        finally:
            for _, claimed in pending:
                with self._flights.flying(claimed):
                    pass
            if source is not None:
                source.cancel()  # every batch it could serve is done: free its bytes

    async def fetch_all(self, gate: ForegroundGate) -> None:
        """Fetch, verify and cache every chunk not cached yet, in large batches, only
        while the gate is quiet; a batch interrupted by a foreground read is retried."""
        # Even the scan of what is cached waits: it is thousands of stats, and a fresh
        # mount is when foreground work (a directory walk, a program start) is busiest.
        await gate.wait_quiet()
        sites = sorted(self._all_sites(), key=lambda site: site.chunk.offset)
        cached = await trio.to_thread.run_sync(self._cached_digests, sites)
        pending = [site for site in sites if site.digest not in cached]
        for batch in _batches(pending, BACKGROUND_BATCH_BYTES):
            remaining = batch
            while remaining:
                await gate.wait_quiet()
                with gate.background() as scope:
                    await self._load(remaining, remember=False)
                if not scope.cancelled_caught:
                    break
                done = await trio.to_thread.run_sync(self._cached_digests, remaining)
                remaining = [site for site in remaining if site.digest not in done]

    async def fetch_everything(self) -> None:
        """Fetch, verify and cache every chunk not cached yet, now, in large batches."""
        sites = sorted(self._all_sites(), key=lambda site: site.chunk.offset)
        cached = await trio.to_thread.run_sync(self._cached_digests, sites)
        pending = [site for site in sites if site.digest not in cached]
        for batch in _batches(pending, BACKGROUND_BATCH_BYTES):
            await self._load(batch, remember=False)

    # -- loading chunks --------------------------------------------------------

    async def _load(self, sites: Sequence[_Site], *, remember: bool = True) -> dict[str, bytes]:
        """Verified contents of ``sites`` by digest: disk cache, else a shared or own fetch."""
        found: dict[str, bytes] = {}
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
                found.update(from_disk)
                missing = [site for site in rest if site.digest not in found]
                theirs += self._in_flight(missing)  # claimed while we read the disk
                mine = [site for site in missing if self._flights.get(site.digest) is None]
                if mine:
                    if remember:
                        neighbours = await self._neighbours(mine)
                        neighbours += await self._siblings(mine, neighbours)
                        rest_of_files = await self._rest_of_files(mine, neighbours)
                        # Claimed by another reader while we looked at the disk: wait for
                        # ours, leave the read-ahead to whoever took it.
                        theirs += self._in_flight(mine)
                        mine = [s for s in mine if self._flights.get(s.digest) is None]
                        neighbours = [s for s in neighbours if not self._flights.get(s.digest)]
                        rest_of_files = [
                            s for s in rest_of_files if not self._flights.get(s.digest)
                        ]
                        if neighbours:
                            self._fetch_alongside(neighbours)
                        if rest_of_files:
                            self._fetch_in_batches(rest_of_files)
                    if mine:
                        fetched = await self._fetch(mine, remember=remember)
                        found.update((site.digest, fetched[site.digest]) for site in mine)
            unique = []
            for site, flight in theirs:
                content = await _outcome(flight)
                if content is None:
                    unique.append(site)  # its loader was cancelled or missed: try ourselves
                else:
                    found[site.digest] = content
        return found

    async def _neighbours(self, missing: Sequence[_Site]) -> list[_Site]:
        """The chunks after ``missing`` in the blob that a sequential reader will want
        next (``readwindow``): not cached, not being fetched, within the window."""
        start = min(site.chunk.offset for site in missing)
        end = max(site.chunk.end for site in missing)
        extent = self._window.extent(start)
        candidates: list[_Site] = []
        if extent:
            ordered = self._sites_by_offset()
            position = bisect.bisect_left(ordered, end, key=lambda site: site.chunk.offset)
            taken = {site.digest for site in missing}
            for site in ordered[position:]:
                if site.chunk.end > end + extent or self._flights.get(site.digest):
                    break
                if site.digest not in taken and site.digest not in self._memory:
                    candidates.append(site)
                    taken.add(site.digest)
        if candidates:
            candidates = await self._to_fetch(candidates)
        last = max([end, *(site.chunk.end for site in candidates)])
        self._window.fetched(start, last)
        return candidates

    async def _siblings(self, missing: Sequence[_Site], taken: Sequence[_Site]) -> list[_Site]:
        """On the first miss in a directory, its small files nearest to the missed one.

        What opens one file of a directory soon opens others, and not in layer order:
        a compiler its headers (``#include`` order), a linker its ``crt*.o``, a program
        its ``/etc`` files; each would be a round trip. The read-ahead window only
        follows readers that walk forward. Files up to ``SIBLING_FILE_MAX_BYTES``, up
        to ``SIBLING_BUDGET_BYTES`` compressed, nearest in the blob first; once per
        directory, so a reader working through a directory costs nothing more."""
        skip = {site.digest for site in [*missing, *taken]}
        wanted: list[_Site] = []
        for site in missing:
            directory = posixpath.dirname(site.file)
            if directory in self._directories_missed:
                continue
            self._directories_missed.add(directory)
            parent = self.index.lookup(directory)
            if parent is None:
                continue
            near = sorted(
                (
                    _Site(chunk, child.name)
                    for child in parent.children.values()
                    if child.type == "reg" and child.size <= SIBLING_FILE_MAX_BYTES
                    for chunk in child.chunks
                    if chunk.digest not in skip and chunk.digest not in self._memory
                ),
                key=lambda near_site: abs(near_site.chunk.offset - site.chunk.offset),
            )
            budget = SIBLING_BUDGET_BYTES
            for sibling in near:
                size = sibling.chunk.end - sibling.chunk.offset
                if size > budget:
                    break
                if sibling.digest not in skip:
                    budget -= size
                    skip.add(sibling.digest)
                    wanted.append(sibling)
        return await self._to_fetch(wanted) if wanted else []

    async def _rest_of_files(self, missing: Sequence[_Site], taken: Sequence[_Site]) -> list[_Site]:
        """The other chunks of files missed in a second chunk: a program mapping a
        large file (a compiler, a shared library) faults its chunks in, one after the
        other in no order that read-ahead can follow; after the second miss the rest of
        the file comes in large requests instead. Files above ``WHOLE_FILE_MAX_BYTES``
        are left to on-demand reads (a random reader of a big file fetches little)."""
        wanted: list[_Site] = []
        skip = {site.digest for site in [*missing, *taken]}
        newly_twice = []
        first_per_file: dict[str, _Site] = {}
        for site in missing:  # one miss per file and read, however many chunks it spans
            if (
                site.file not in first_per_file
                or site.chunk.offset < first_per_file[site.file].chunk.offset
            ):
                first_per_file[site.file] = site
        for site in first_per_file.values():
            missed = self._file_misses.setdefault(site.file, set())
            if site.digest not in missed:
                missed.add(site.digest)
                if len(missed) == 2:
                    newly_twice.append(site.file)
        for file in newly_twice:
            node = self.index.lookup(file)
            if node is None or node.size > WHOLE_FILE_MAX_BYTES:
                continue
            for chunk in node.chunks:
                if chunk.digest not in skip and chunk.digest not in self._memory:
                    skip.add(chunk.digest)
                    wanted.append(_Site(chunk, node.name))
        return await self._to_fetch(wanted) if wanted else []

    def _fetch_in_batches(
        self, sites: Sequence[_Site], *, source: EarlyRegion | None = None
    ) -> None:
        """Fetch read-ahead chunks in batches next to the reader's request (from
        ``source`` where it holds them); their flights are registered now (see
        ``_fetch_alongside``)."""
        batches = [
            (batch, self._flights.register(site.digest for site in batch))
            for batch in _prefetch_batches(sites)
        ]
        trio.lowlevel.spawn_system_task(self._fetch_batches, batches, source)

    def _sites_by_offset(self) -> list[_Site]:
        if self._by_offset is None:
            self._by_offset = sorted(self._all_sites(), key=lambda site: site.chunk.offset)
        return self._by_offset

    def _in_flight(self, sites: Sequence[_Site]) -> list[tuple[_Site, Flight]]:
        return [
            (site, flight)
            for site in sites
            if (flight := self._flights.get(site.digest)) is not None
        ]

    def _fetch_alongside(self, sites: Sequence[_Site]) -> None:
        """Fetch read-ahead chunks in a request of their own, next to the reader's: the
        reader waits for its own chunks only, not for the window's transfer, and keeps
        computing while the window arrives. The flights are registered now, so a reader
        of one of these chunks waits for this request instead of fetching it again."""
        claimed = self._flights.register(site.digest for site in sites)
        trio.lowlevel.spawn_system_task(self._fetch_optional, sites, claimed, True)

    async def _fetch_optional(
        self,
        sites: Sequence[_Site],
        claimed: dict[str, Flight],
        remember: bool,
        source: EarlyRegion | None = None,
    ) -> None:
        """Fetch chunks nobody waits on yet (read-ahead, prefetch); however this ends,
        their flights land. A chunk that did not come (the request failed, or broke off
        before it) lands empty, so a reader waiting for it fetches it itself."""
        with self._flights.flying(claimed) as flights:
            try:
                await self._fetch_into(flights, sites, remember=remember, source=source)
            except Exception:  # only a hint: see above
                log.debug("%s: read-ahead fetch failed", self._where, exc_info=True)

    async def _fetch(self, sites: Sequence[_Site], *, remember: bool = True) -> dict[str, bytes]:
        """Fetch ``sites`` in one request, verify each chunk, cache it, and resolve its
        flight. A chunk that fails only fails its own flight (the others land, so their
        waiters need not fetch again); the call raises when any failed."""
        with self._flights.claim(site.digest for site in sites) as flights:
            return await self._fetch_into(flights, sites, remember=remember)

    async def _fetch_into(
        self,
        flights: dict[str, Flight],
        sites: Sequence[_Site],
        *,
        remember: bool,
        source: EarlyRegion | None = None,
    ) -> dict[str, bytes]:
        """Fetch ``sites`` in one request and land each chunk as its bytes come in: a
        reader of the first chunks of a large request does not wait for its last."""
        contents: dict[str, bytes] = {}
        failures: dict[str, LazybuildError] = {}
        send, receive = trio.open_memory_channel[tuple[_Site, bytes]](float("inf"))

        async def lander(arrivals: trio.MemoryReceiveChannel[tuple[_Site, bytes]]) -> None:
            async with arrivals:
                async for first in arrivals:
                    group = _take_arrived(arrivals, first)
                    verified, failed = await self._land(group, flights, remember)
                    contents.update(verified)
                    failures.update(failed)

        request_failure: LazybuildError | None = None
        async with trio.open_nursery() as nursery:
            for _ in range(VERIFY_JOBS_PER_REQUEST):
                nursery.start_soon(lander, receive.clone())
            receive.close()
            with send:
                try:
                    await self._request(
                        sites, lambda index, data: send.send_nowait((sites[index], data)), source
                    )
                except LazybuildError as exc:
                    request_failure = exc  # what came before it still lands
        self.stats.chunks_fetched += len(contents)
        if request_failure is not None:
            raise request_failure
        for site in sites:
            if site.digest in failures:
                raise failures[site.digest]
        return contents

    async def _land(
        self, group: Sequence[tuple[_Site, bytes]], flights: dict[str, Flight], remember: bool
    ) -> tuple[dict[str, bytes], dict[str, LazybuildError]]:
        """Verify one group of fetched chunks in a worker thread and wake their waiters
        at once: a reader waits for its own chunks, not for the rest of a prefetch of
        thousands, nor for the disk (the cache holds them in memory until written)."""
        verified, failed = await trio.to_thread.run_sync(
            self._verify_group, group, limiter=_VERIFY_THREADS
        )
        self._cache.hold(verified)
        self._not_on_disk.difference_update(verified)
        trio.lowlevel.spawn_system_task(self._store, list(verified))
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
        # Shielded: a filesystem shutting down still writes what it fetched.
        with trio.CancelScope(shield=True):
            try:
                await trio.to_thread.run_sync(
                    self._cache.write_held, digests, limiter=_STORE_THREADS
                )
            except OSError as exc:  # a full or read-only cache must not fail the read
                log.warning("%s: cannot cache %d chunk(s): %s", self._where, len(digests), exc)

    async def _request(
        self,
        sites: Sequence[_Site],
        arrived: Callable[[int, bytes], None],
        source: EarlyRegion | None = None,
    ) -> None:
        """Hand the compressed bytes of each of ``sites`` (unverified) to ``arrived(index,
        bytes)`` as they come: from ``source`` when it holds them all (counted as it
        received them), else in one request."""
        ranges = [(s.chunk.offset, s.chunk.end - s.chunk.offset) for s in sites]
        wanted = list(range(len(sites)))
        if source is not None and source.covers(ranges):
            handed: set[int] = set()

            def from_source(index: int, data: bytes) -> None:
                handed.add(index)
                arrived(index, data)

            try:
                await source.stream_ranges(ranges, from_source)
                return
            except LazybuildError as exc:  # a piece that did not come: ask the registry
                log.debug("%s: %s", self._where, exc)
                wanted = [index for index in wanted if index not in handed]
        started = time.perf_counter()
        received = 0

        def counted(position: int, data: bytes) -> None:
            nonlocal received
            received += len(data)
            arrived(wanted[position], data)

        try:
            await self._blob.stream_ranges([ranges[index] for index in wanted], counted)
        except Exception as exc:
            files = sorted({sites[index].file for index in wanted})
            message = (
                f"{self._where}: fetching {len(wanted)} chunk(s) of "
                f"{', '.join(map(repr, files))} failed: {exc}"
            )
            log.error("%s", message)
            if isinstance(exc, LazybuildError):
                raise
            raise RegistryError(message) from exc
        finally:
            self.stats.fetch_seconds += time.perf_counter() - started
            self.stats.requests += 1
            self.stats.bytes_fetched += received
        trace_fetch(
            self._where,
            started,
            sorted({sites[index].file for index in wanted}),
            received,
            [(sites[index].file, sites[index].chunk.chunk_offset) for index in wanted],
        )

    def _verify_group(
        self, group: Sequence[tuple[_Site, bytes]]
    ) -> tuple[dict[str, bytes], dict[str, LazybuildError]]:
        """(worker thread) The verified contents of ``group`` and its failures, by digest."""
        verified: dict[str, bytes] = {}
        failed: dict[str, LazybuildError] = {}
        for site, compressed in group:
            try:
                verified[site.digest] = self._verify(site, compressed)
            except LazybuildError as exc:
                failed[site.digest] = exc
        return verified, failed

    def _verify(self, site: _Site, compressed: bytes) -> bytes:
        where = f"{self._where}: file {site.file!r}"
        if not site.digest:
            raise FormatError(f"{where}: chunk {site.chunk.chunk_offset} has no chunkDigest")
        try:
            return decompress_chunk(compressed, site.chunk, where=where)
        except LazybuildError as exc:
            # The TOC is verified, so bytes that do not inflate to the chunk it describes
            # (bad gzip, wrong length, wrong digest) are all the same failure: wrong bytes.
            failure = DigestMismatchError(
                f"{exc} (file range {site.chunk.chunk_offset}+{site.chunk.size})"
            )
            log.error("%s", failure)
            raise failure from exc

    async def _from_disk(self, sites: Sequence[_Site]) -> dict[str, bytes]:
        """Contents of ``sites`` in the disk cache. A few small chunks are read right here:
        for a page-cache read of some KiB, the hop to a worker thread and back costs
        more, and much more while a build keeps every core busy (a Go build's thousands
        of source files). Larger reads go to a thread, so requests keep being served."""
        if sum(site.chunk.size for site in sites) <= INLINE_DISK_READ_BYTES:
            return self._read_cached(sites)
        return await trio.to_thread.run_sync(self._read_cached, sites)

    async def _to_fetch(self, sites: Sequence[_Site]) -> list[_Site]:
        """Those of ``sites`` in neither memory nor the disk cache, nor in flight. The
        flights are looked at after the disk: a claim made meanwhile counts."""
        uncached = await self._uncached(sites)
        return [site for site in uncached if self._flights.get(site.digest) is None]

    async def _uncached(self, sites: Sequence[_Site]) -> list[_Site]:
        """Those of ``sites`` in neither memory nor the disk cache."""
        cached = await trio.to_thread.run_sync(self._cached_digests, sites)
        return [s for s in sites if s.digest not in cached and s.digest not in self._memory]

    def _read_cached(self, sites: Sequence[_Site]) -> dict[str, bytes]:
        """(worker thread, or the event loop for a few small chunks)"""
        found = {}
        for site in sites:
            data = self._cache.get(site.digest)
            if data is not None:
                found[site.digest] = data
        return found

    def _cached_digests(self, sites: Sequence[_Site]) -> set[str]:
        """(worker thread)"""
        return {site.digest for site in sites if self._cache.contains(site.digest)}

    def _all_sites(self) -> list[_Site]:
        """Every chunk of the layer once (identical chunks share one digest, one fetch)."""
        if self._sites is None:
            by_digest: dict[str, _Site] = {}
            for node in self.index.walk():
                if node.type == "reg":
                    for chunk in node.chunks:
                        by_digest.setdefault(chunk.digest, _Site(chunk, node.name))
            self._sites = list(by_digest.values())
        return self._sites


def _early_region(
    blob: RemoteBlob, descriptor: Descriptor, tocs: TocStore, stats: LayerStats, where: str
) -> EarlyRegion | None:
    """The layer's prefetch region, on its way, when its descriptor gives the size and
    the layer is new here (a layer whose TOC is kept was likely fetched before)."""
    size = prefetch_region_hint(descriptor)
    expected = descriptor.annotations.get(TOC_DIGEST_ANNOTATION)
    if size is None or expected is None:
        return None
    try:
        if tocs.has(expected):  # one stat, in the event loop: cheaper than a thread hop
            return None
    except FormatError:
        return None  # opening the TOC says what is wrong
    early = EarlyRegion(blob, size, stats, where)
    trio.lowlevel.spawn_system_task(early.run)
    return early


def _chunks_under(node: Node, ranges: Sequence[tuple[int, int]]) -> list[ChunkRef]:
    """The chunks of ``node`` holding bytes of ``ranges``, in the order the ranges come."""
    picked: list[ChunkRef] = []
    for offset, length in ranges:
        end = min(offset + length, node.size)
        if offset < end and node.chunks:
            first, last = _covering(node.chunks, offset, end)
            picked.extend(node.chunks[first:last])
    return picked


def _covering(chunks: Sequence[ChunkRef], offset: int, end: int) -> tuple[int, int]:
    """The slice of a file's ``chunks`` that holds bytes [offset, end) of it."""
    first = bisect.bisect_right(chunks, offset, key=lambda c: c.chunk_offset) - 1
    last = bisect.bisect_left(chunks, end, key=lambda c: c.chunk_offset)
    return first, last


async def _outcome(flight: Flight) -> bytes | None:
    await flight.done.wait()
    if flight.error is not None:
        raise type(flight.error)(str(flight.error))
    return flight.content


def _take_arrived(
    arrivals: trio.MemoryReceiveChannel[tuple[_Site, bytes]], first: tuple[_Site, bytes]
) -> list[tuple[_Site, bytes]]:
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


def _prefetch_batches(sites: Sequence[_Site]) -> list[list[_Site]]:
    """``sites`` in order: a first batch of at most ``PREFETCH_FIRST_BATCH_BYTES`` (or
    the first chunk alone), then batches of at most ``PREFETCH_BATCH_BYTES``."""
    head = _batches(sites, PREFETCH_FIRST_BATCH_BYTES)[:1]
    taken = len(head[0]) if head else 0
    return head + _batches(sites[taken:], PREFETCH_BATCH_BYTES)


def _batches(sites: Sequence[_Site], max_bytes: int) -> list[list[_Site]]:
    return _grouped(sites, lambda site: site.chunk.end - site.chunk.offset, max_bytes)


def _grouped(
    items: Sequence[T], size: Callable[[T], int], max_bytes: int, max_items: int | None = None
) -> list[list[T]]:
    """``items`` in order, cut into runs of at most ``max_bytes`` (an item larger than
    that alone) and at most ``max_items``."""
    groups: list[list[T]] = []
    current: list[T] = []
    current_bytes = 0
    for item in items:
        item_bytes = size(item)
        if current and (
            current_bytes + item_bytes > max_bytes
            or (max_items is not None and len(current) >= max_items)
        ):
            groups.append(current)
            current, current_bytes = [], 0
        current.append(item)
        current_bytes += item_bytes
    if current:
        groups.append(current)
    return groups
