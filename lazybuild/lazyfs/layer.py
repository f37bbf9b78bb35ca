"""One eStargz layer served lazily: verified TOC, on-demand chunks, prefetch, background
fetch, and the background work all that starts, which the layer owns.

Every byte handed out has been checked: the TOC against the descriptor's
``toc.digest`` annotation before ``open`` returns, each chunk against its
``chunkDigest`` before it is cached or returned. The parts, as stargz-snapshotter
splits reader, layer and remote blob:

- ``file_reads``: file ranges cut from verified chunks, one or several at once;
- ``chunk_fetcher``: verified chunks, memory then disk cache then one range request
  for all a load misses (``chunk_request``, ``chunk_verify``, ``chunk_flight``);
- fetch policy, what comes besides what was asked: ``miss_readahead`` (neighbours,
  siblings, the rest of a file), ``prefetch`` (the prioritized region, file lists),
  ``library_prefetch`` (a program's libraries), ``background_fetch`` (the whole layer);
- ``layer_tasks``: the work nobody awaits, cancelled and waited for by ``aclose``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from types import TracebackType

import trio

from lazybuild.cache.chunkcache import ChunkCache
from lazybuild.errors import FormatError, LazybuildError
from lazybuild.estargz.hints import prefetch_region_hint
from lazybuild.estargz.index import LayerIndex, Node
from lazybuild.lazyfs import background_fetch
from lazybuild.lazyfs.chunk_fetcher import ChunkFetcher
from lazybuild.lazyfs.chunk_memory import ChunkMemory
from lazybuild.lazyfs.chunk_site import LayerSites, sites_of
from lazybuild.lazyfs.early_region import EarlyRegion
from lazybuild.lazyfs.file_reads import FileRange, FileReader, RangeResult
from lazybuild.lazyfs.layer_stats import LayerStats
from lazybuild.lazyfs.layer_tasks import LayerTasks
from lazybuild.lazyfs.layer_toc import TocStore, open_index
from lazybuild.lazyfs.layerset import LayerSet
from lazybuild.lazyfs.library_prefetch import LibraryPrefetch
from lazybuild.lazyfs.miss_readahead import MissReadAhead
from lazybuild.lazyfs.prefetch import (
    PREFETCH_BATCH_BYTES,
    PREFETCH_FIRST_BATCH_BYTES,
    Prefetcher,
)
from lazybuild.lazyfs.priority import ForegroundGate
from lazybuild.oci.descriptor import Descriptor
from lazybuild.oci.mediatypes import TOC_DIGEST_ANNOTATION
from lazybuild.registry.blob import RandomAccessBlob
from lazybuild.state.statedir import default_state_dir

# The prefetch batch sizes stay importable from here: tests predict request counts by them.
__all__ = [
    "PREFETCH_BATCH_BYTES",
    "PREFETCH_FIRST_BATCH_BYTES",
    "FileRange",
    "LayerStats",
    "LazyLayer",
    "RangeResult",
]

log = logging.getLogger(__name__)


class LazyLayer:
    def __init__(
        self,
        blob: RandomAccessBlob,
        descriptor: Descriptor,
        index: LayerIndex,
        cache: ChunkCache,
        memory: ChunkMemory,
        *,
        layers: LayerSet | None = None,
        stats: LayerStats | None = None,
        early_region: EarlyRegion | None = None,
        tasks: LayerTasks | None = None,
        foreground: Callable[[], AbstractAsyncContextManager[object]] | None = None,
    ) -> None:
        where = f"layer {descriptor.digest}"
        self.digest = descriptor.digest
        self.descriptor = descriptor
        self.index = index
        self.stats = stats or LayerStats(descriptor.digest, descriptor.size)
        # Its verified TOC was kept from an earlier open on this machine: a layer in use
        # again (``open`` sets it).
        self.opened_before = False
        self._early_region = early_region  # until prefetch takes it
        self._tasks = tasks or LayerTasks(where)
        self._fetcher = ChunkFetcher(
            blob,
            cache,
            memory,
            stats=self.stats,
            tasks=self._tasks,
            where=where,
            foreground=foreground,
        )
        self._sites = LayerSites(index)
        self._prefetcher = Prefetcher(self._fetcher, index, self._sites, self.stats)
        read_ahead = MissReadAhead(self._fetcher, index, self._sites, self._prefetcher)
        # Where libraries are looked for: the layers of this layer's images, or just this.
        libraries = LibraryPrefetch(self._fetcher, layers or LayerSet(), self)
        self._reader = FileReader(self._fetcher, read_ahead.after_miss, libraries.note)

    @classmethod
    async def open(
        cls,
        blob: RandomAccessBlob,
        descriptor: Descriptor,
        cache: ChunkCache,
        *,
        state_dir: Path | None = None,
        memory: ChunkMemory | None = None,
        layers: LayerSet | None = None,
        nursery: trio.Nursery | None = None,
        foreground: Callable[[], AbstractAsyncContextManager[object]] | None = None,
    ) -> LazyLayer:
        """Fetch and verify the TOC (FormatError without a toc.digest annotation,
        DigestMismatchError when it does not match). ``memory`` may be shared by layers;
        ``layers`` is where programs read from this layer find their libraries. The
        layer's background work runs in ``nursery`` (a service's, so that it ends with
        the service), else as system tasks; ``aclose`` cancels it either way. Its
        requests for readers run inside ``foreground`` (``ForegroundGate.foreground``),
        so that its background fetch yields the link to them.

        A layer seen for the first time whose descriptor gives its prefetch region's
        size starts fetching the region meanwhile (see ``early_region``)."""
        where = f"layer {descriptor.digest}"
        tasks = LayerTasks(where, nursery)
        tocs = TocStore(state_dir if state_dir is not None else default_state_dir())
        stats = LayerStats(descriptor.digest, descriptor.size)
        early = _early_region(blob, descriptor, tocs, stats=stats, tasks=tasks)
        started = time.perf_counter()
        try:
            opened = await open_index(blob, descriptor, tocs, where)
        except BaseException:
            with trio.CancelScope(shield=True):
                await tasks.aclose()
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
            tasks=tasks,
            foreground=foreground,
        )
        layer.opened_before = opened.stored
        layer.stats.requests += opened.requests
        layer.stats.bytes_fetched += opened.bytes_fetched
        layer.stats.fetch_seconds += time.perf_counter() - started
        return layer

    # -- reads -----------------------------------------------------------------

    async def read(self, node: Node, offset: int, size: int) -> bytes:
        """Bytes [offset, offset+size) of regular file ``node``, short at its end."""
        return await self._reader.read(node, offset, size)

    async def read_many(self, ranges: Sequence[FileRange]) -> list[RangeResult]:
        """``read`` of each (node, offset, size) of ``ranges``, in order, their missing
        chunks fetched together (adjacent ones in one span of one request). A range
        that could not be had holds its exception (LazybuildError or OSError) instead
        of bytes, so that the caller can name its file; see ``FileReader.read_many``."""
        return await self._reader.read_many(ranges)

    # -- prefetch and background fetch -----------------------------------------

    async def prefetch(self) -> int:
        """Start fetching the prioritized region [0, landmark) and return at once with the
        compressed bytes scheduled (0 without a prefetch landmark or when cached).

        The region goes in batches, a few at a time, in its order, which is the order
        the workload read its files in. The flights are registered before this returns,
        so a read of a file on its way waits for its batch."""
        early, self._early_region = self._early_region, None
        return await self._prefetcher.region(early)

    async def prefetch_files(
        self, paths: Sequence[str], ranges: Mapping[str, Sequence[tuple[int, int]]] | None = None
    ) -> tuple[int, int]:
        """Start fetching the chunks of ``paths`` (files a step read last time, or that an
        image's workload record lists) that are neither cached nor being fetched, in
        batches in the given order; returns the chunks and compressed bytes not cached
        yet (those on their way already included: asked for twice, they count twice).
        A file over ``PREFETCH_FILE_MAX_BYTES`` is fetched only in its ``ranges``
        (offset, length), and not at all without any. The flights are registered before
        this returns, so the step's reads wait for them instead of fetching again."""
        return await self._prefetcher.files(paths, ranges)

    def fetch_files_soon(self, nodes: Sequence[Node]) -> None:
        """Fetch the chunks of these regular files of this layer that are not cached, in
        the background, as a prefetch (a program's libraries, found from another layer)."""
        sites = {site.digest: site for node in nodes for site in sites_of(node)}
        if sites:
            self._tasks.start_soon(self._prefetcher.uncached_soon, list(sites.values()))

    async def fetch_all(self, gate: ForegroundGate) -> None:
        """Fetch, verify and cache every chunk not cached yet, in large batches, only
        while the gate is quiet; a batch interrupted by a foreground read is retried."""
        await background_fetch.fetch_all(self._fetcher, self._sites, gate)

    def start_background_fetch(
        self, gate: ForegroundGate, *, then: Callable[[], Awaitable[None]] | None = None
    ) -> None:
        """Run ``fetch_all`` as background work of this layer, and ``then`` once every
        chunk is cached; a failure stops it with a warning (what it did not fetch is
        fetched on demand)."""
        self._tasks.start_soon(self._fetch_in_background, gate, then)

    async def fetch_everything(self) -> None:
        """Fetch, verify and cache every chunk not cached yet, now, in large batches."""
        await background_fetch.fetch_everything(self._fetcher, self._sites)

    async def _fetch_in_background(
        self, gate: ForegroundGate, then: Callable[[], Awaitable[None]] | None
    ) -> None:
        try:
            await self.fetch_all(gate)
        except LazybuildError as exc:
            log.warning("layer %s: background fetch stopped: %s", self.digest, exc)
            return
        if then is not None:
            await then()

    # -- closing ---------------------------------------------------------------

    @property
    def background_tasks(self) -> int:
        """Background tasks of this layer not finished yet."""
        return self._tasks.running

    async def aclose(self) -> None:
        """Cancel the layer's background work and wait for it to end (chunks already
        fetched are still written to the cache). Reads still work afterwards, without
        read-ahead or prefetch: what they miss they fetch themselves."""
        if self._early_region is not None:
            self._early_region.cancel()
            self._early_region = None
        await self._tasks.aclose()

    async def __aenter__(self) -> LazyLayer:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        with trio.CancelScope(shield=True):
            await self.aclose()


def _early_region(
    blob: RandomAccessBlob,
    descriptor: Descriptor,
    tocs: TocStore,
    *,
    stats: LayerStats,
    tasks: LayerTasks,
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
    early = EarlyRegion(blob, size, stats, f"layer {descriptor.digest}")
    tasks.start_soon(early.run)
    return early
