"""Prefetch: chunks fetched before anyone reads them, because they will be read soon.

The prioritized region of a layer (its landmark), files a step read last time or that
an image's workload record lists, the rest of a file faulted in piece by piece, a
program's libraries. All go the same way: started, not waited for, in batches in the
order the files will be read (``concurrency.in_order``), with their flights claimed
before the call returns, so a read of a file on its way waits for its batch instead of
fetching it again.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

from lazybuild.estargz.index import LayerIndex
from lazybuild.estargz.toc import PREFETCH_FILE_MAX_BYTES
from lazybuild.lazyfs.chunk_fetcher import ChunkFetcher
from lazybuild.lazyfs.chunk_site import ChunkSite, LayerSites, batches, chunks_under, sites_of
from lazybuild.lazyfs.early_region import EarlyRegion
from lazybuild.lazyfs.layer_stats import LayerStats

log = logging.getLogger(__name__)

# Requests of at most this many compressed bytes, this many at once, in the order the
# files will be read, so the first files arrive first.
PREFETCH_BATCH_BYTES = 2 << 20
PREFETCH_CONCURRENCY = 3
# The first batch is small: it holds the first files the workload reads (its binary,
# /etc/passwd), which then arrive after a round trip instead of sharing the link with
# megabytes of later files (a JVM's first 2 MiB batch took 0.35 s to land, and the
# container's start waited for it).
PREFETCH_FIRST_BATCH_BYTES = 256 << 10


class Prefetcher:
    def __init__(
        self, fetcher: ChunkFetcher, index: LayerIndex, sites: LayerSites, stats: LayerStats
    ) -> None:
        self._fetcher = fetcher
        self._index = index
        self._sites = sites
        self._stats = stats

    async def region(self, early: EarlyRegion | None) -> int:
        """Start fetching the prioritized region [0, landmark), from ``early`` where it
        holds it; the compressed bytes scheduled (0 without a landmark, or cached).

        The region's order is the order the workload read its files in: a request for
        the whole region made it wait for the last byte (a second for a JVM's 12 MB)."""
        landmark = self._index.prefetch_landmark_offset
        missing: list[ChunkSite] = []
        if landmark is not None and not self._index.no_prefetch and landmark > 0:
            region = [site for site in self._sites.by_offset() if site.chunk.end <= landmark]
            missing = await self._fetcher.to_fetch(region)
        if not missing:
            if early is not None:
                early.cancel()
            return 0
        self.soon(missing, early)
        scheduled = sum(site.compressed_size for site in missing)
        self._stats.prefetch_bytes += scheduled
        return scheduled

    async def files(
        self, paths: Sequence[str], ranges: Mapping[str, Sequence[tuple[int, int]]] | None = None
    ) -> tuple[int, int]:
        """Start fetching the chunks of ``paths`` that are neither cached nor on their
        way, in the order given; the chunks and compressed bytes not cached yet (those
        on their way included). A file over ``PREFETCH_FILE_MAX_BYTES`` is mostly read
        in places: only the chunks under its ``ranges`` (offset, length) come, and none
        without any."""
        sites: list[ChunkSite] = []
        seen: set[str] = set()
        for path in paths:
            node = self._index.lookup(path)
            if node is None or node.type != "reg":
                continue  # gone from this version of the layer: nothing to fetch
            chunks = node.chunks
            if node.size > PREFETCH_FILE_MAX_BYTES:
                chunks = chunks_under(node, (ranges or {}).get(path, ()))
            for site in sites_of(node, chunks):
                if site.digest not in seen:
                    seen.add(site.digest)
                    sites.append(site)
        uncached = await self._fetcher.uncached(sites)
        missing = [site for site in uncached if not self._fetcher.in_flight(site.digest)]
        if missing:
            self.soon(missing)
        return len(uncached), sum(site.compressed_size for site in uncached)

    async def uncached_soon(self, sites: Sequence[ChunkSite]) -> None:
        """Those of ``sites`` not cached nor on their way, fetched as a prefetch."""
        try:
            missing = await self._fetcher.to_fetch(sites)
        except Exception:  # only a hint, like read-ahead
            log.debug("looking for cached chunks to prefetch failed", exc_info=True)
            return
        if missing:
            self.soon(missing)

    def soon(self, sites: Sequence[ChunkSite], source: EarlyRegion | None = None) -> None:
        """Fetch ``sites`` in prefetch batches, in their order; claimed now."""
        self._fetcher.fetch_in_batches(prefetch_batches(sites), PREFETCH_CONCURRENCY, source)


def prefetch_batches(sites: Sequence[ChunkSite]) -> list[list[ChunkSite]]:
    """``sites`` in order: a first batch of at most ``PREFETCH_FIRST_BATCH_BYTES`` (or
    the first chunk alone), then batches of at most ``PREFETCH_BATCH_BYTES``."""
    head = batches(sites, PREFETCH_FIRST_BATCH_BYTES)[:1]
    taken = len(head[0]) if head else 0
    return head + batches(sites[taken:], PREFETCH_BATCH_BYTES)
