"""One request for the compressed bytes of some chunks: from a layer's early region when
it holds them all, else one (multi-range) request to the registry, counted in the
layer's stats and traced. Nothing here is verified yet."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence

from lazybuild.errors import LazybuildError, RegistryError
from lazybuild.lazyfs.chunk_site import ChunkSite
from lazybuild.lazyfs.early_region import EarlyRegion
from lazybuild.lazyfs.fetchtrace import trace_fetch
from lazybuild.lazyfs.layer_stats import LayerStats
from lazybuild.registry.blob import RandomAccessBlob

log = logging.getLogger(__name__)


class ChunkRequests:
    def __init__(self, blob: RandomAccessBlob, stats: LayerStats, where: str) -> None:
        self._blob = blob
        self._stats = stats
        self._where = where

    async def stream(
        self,
        sites: Sequence[ChunkSite],
        arrived: Callable[[int, bytes], None],
        source: EarlyRegion | None = None,
    ) -> None:
        """Hand the compressed bytes of each of ``sites`` to ``arrived(index, bytes)`` as
        they come: from ``source`` when it holds them all (counted as it received
        them), else in one request. A LazybuildError once a chunk could not be had;
        those handed over before it stand."""
        ranges = [(s.chunk.offset, s.compressed_size) for s in sites]
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
            self._stats.fetch_seconds += time.perf_counter() - started
            self._stats.requests += 1
            self._stats.bytes_fetched += received
        trace_fetch(
            self._where,
            started,
            sorted({sites[index].file for index in wanted}),
            received,
            [(sites[index].file, sites[index].chunk.chunk_offset) for index in wanted],
        )
