"""A layer's prefetch region, fetched from the moment the layer is added, before its TOC.

Where the prioritized files end is in the TOC, and the TOC costs a footer and TOC read
(two round trips, and a second of transfer for a big one) plus its parsing. A layer
lazybuild wrote says it on its descriptor (``estargz.hints``), so the region's bytes
start coming as soon as the layer is added, alongside the TOC. Nothing is handed out
from here until the TOC is verified: the layer reads its region's chunks from this
instead of the registry, and checks every chunk against its digest as it would
fetched ones.

The region comes in one streamed request, in its order, which is the order the
workload reads its files in: each file is there as soon as the link has carried the
files before it, where requests side by side would share the link and bring the
first files later. Readers wait for the pieces they need, not for the whole region.
"""

from __future__ import annotations

import bisect
import logging
import time
from collections.abc import Callable, Sequence

import trio

from lazybuild.errors import RegistryError
from lazybuild.lazyfs.fetchtrace import trace_fetch
from lazybuild.lazyfs.layer_stats import LayerStats
from lazybuild.registry.blob import RandomAccessBlob

log = logging.getLogger(__name__)

TRACE_LABEL = "<prefetch region>"
# Readers wait for the pieces holding their bytes: small enough that a file is served
# right after its last byte came, large enough to cost little in bookkeeping.
PIECE_BYTES = 64 << 10


class EarlyRegion:
    """Bytes [0, size) of ``blob``, fetched by ``run`` in one request and kept in pieces
    of ``PIECE_BYTES`` as they arrive; counted in ``stats``."""

    def __init__(self, blob: RandomAccessBlob, size: int, stats: LayerStats, where: str) -> None:
        self.size = size
        self._blob = blob
        self._stats = stats
        self._where = where
        self._bounds = _piece_bounds(size, PIECE_BYTES)
        self._pieces: list[bytes | None] = [None] * len(self._bounds)
        self._failure: BaseException | None = None
        self._arrived = [trio.Event() for _ in self._bounds]
        self._scope = trio.CancelScope()

    async def run(self) -> None:
        """Fetch the region; a failure (or ``cancel``) fails only the reads that need
        the pieces that did not come, never this task."""
        started = time.perf_counter()
        received = 0

        def arrived(position: int, data: bytes) -> None:
            nonlocal received
            received += len(data)
            self._pieces[position] = data
            self._stats.bytes_fetched += len(data)
            self._arrived[position].set()

        ranges = [(start, stop - start) for start, stop in self._bounds]
        try:
            with self._scope:
                self._stats.requests += 1
                await self._blob.stream_ranges(ranges, arrived)
        except Exception as exc:  # only a head start: the layer fetches on its own
            log.debug("%s: prefetch region fetch failed", self._where, exc_info=True)
            self._failure = exc
        finally:
            self._stats.fetch_seconds += time.perf_counter() - started
            if received:
                trace_fetch(self._where, started, (TRACE_LABEL,), received)
            for arrived_event in self._arrived:
                arrived_event.set()  # whatever did not come fails its readers now

    def cancel(self) -> None:
        """Stop fetching and drop what came (the layer did not open, or is done with it)."""
        self._scope.cancel()
        self._pieces = [None] * len(self._bounds)

    def covers(self, ranges: Sequence[tuple[int, int]]) -> bool:
        return all(offset >= 0 and offset + length <= self.size for offset, length in ranges)

    async def stream_ranges(
        self, ranges: Sequence[tuple[int, int]], arrived: Callable[[int, bytes], None]
    ) -> None:
        """Hand each (offset, length) range to ``arrived(index, bytes)`` as soon as the
        pieces holding it are in, in the order given; RegistryError at the first range
        whose pieces could not be fetched (the ones handed over before it stand)."""
        for index, (offset, length) in enumerate(ranges):
            arrived(index, await self._read(offset, length))

    async def _read(self, offset: int, length: int) -> bytes:
        parts = []
        end = offset + length
        first = bisect.bisect_right(self._bounds, offset, key=lambda bound: bound[0]) - 1
        for position in range(max(first, 0), len(self._bounds)):
            start, stop = self._bounds[position]
            if start >= end:
                break
            await self._arrived[position].wait()
            piece = self._pieces[position]
            if piece is None:
                reason = self._failure or "dropped"
                raise RegistryError(
                    f"{self._where}: prefetch region bytes {start}-{stop}: {reason}"
                )
            parts.append(piece[max(offset, start) - start : min(end, stop) - start])
        return b"".join(parts)


def _piece_bounds(size: int, piece: int) -> list[tuple[int, int]]:
    """The (start, stop) of the pieces [0, size) is kept in."""
    return [(start, min(size, start + piece)) for start in range(0, size, piece)]
