"""Fetching a whole layer: in the background while reads leave the link alone
(``priority.ForegroundGate``), or now, when asked to. Large batches in blob order,
straight to the disk cache."""

from __future__ import annotations

from lazybuild.lazyfs.chunk_fetcher import ChunkFetcher
from lazybuild.lazyfs.chunk_site import ChunkSite, LayerSites, batches
from lazybuild.lazyfs.priority import ForegroundGate

# Compressed bytes per background request: large enough that request overhead is
# small, small enough that a batch cancelled by a foreground read wastes little.
BACKGROUND_BATCH_BYTES = 16 << 20


async def fetch_all(fetcher: ChunkFetcher, sites: LayerSites, gate: ForegroundGate) -> None:
    """Fetch, verify and cache every chunk not cached yet, only while the gate is quiet;
    a batch interrupted by a foreground read is retried. Raises the first chunk that
    could not be had."""
    # Even the scan of what is cached waits: it is thousands of stats, and a fresh
    # mount is when foreground work (a directory walk, a program start) is busiest.
    await gate.wait_quiet()
    for batch in batches(await _uncached(fetcher, sites), BACKGROUND_BATCH_BYTES):
        remaining = batch
        while remaining:
            await gate.wait_quiet()
            with gate.background() as scope:
                await _load(fetcher, remaining)
            if not scope.cancelled_caught:
                break
            done = await fetcher.cached_digests(remaining)
            remaining = [site for site in remaining if site.digest not in done]


async def fetch_everything(fetcher: ChunkFetcher, sites: LayerSites) -> None:
    """Fetch, verify and cache every chunk not cached yet, now."""
    for batch in batches(await _uncached(fetcher, sites), BACKGROUND_BATCH_BYTES):
        await _load(fetcher, batch)


async def _uncached(fetcher: ChunkFetcher, sites: LayerSites) -> list[ChunkSite]:
    ordered = sites.by_offset()
    cached = await fetcher.cached_digests(ordered)
    return [site for site in ordered if site.digest not in cached]


async def _load(fetcher: ChunkFetcher, batch: list[ChunkSite]) -> None:
    # Not kept in memory: nobody is reading these now.
    loaded = await fetcher.load(batch, remember=False, background=True)
    failure = loaded.failure_of(site.digest for site in batch)
    if failure is not None:
        raise failure
