"""A layer's prefetch region, fetched from the moment the layer is added, before its TOC.

Where the prioritized files end is in the TOC, and the TOC costs a footer and TOC read
(two round trips, and a second of transfer for a big one) plus its parsing. A layer
lazybuild wrote says it on its descriptor (``estargz.hints``), so the region's bytes
start coming as soon as the layer is added, alongside the TOC. Nothing is handed out
from here until the TOC is verified: the layer reads its region's chunks from this
instead of the registry, and checks every chunk against its digest as it would
fetched ones.

The region comes in pieces the way a prefetch batches it (a small first piece for
the first files the workload opens, then larger ones, a few at a time, in order), so
the workload's first files arrive first.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence

import trio

from lazybuild.errors import RegistryError
from lazybuild.lazyfs.concurrency import in_order
from lazybuild.lazyfs.fetchtrace import trace_fetch
from lazybuild.lazyfs.layer_stats import LayerStats
from lazybuild.registry.blob import RemoteBlob

log = logging.getLogger(__name__)

TRACE_LABEL = "<prefetch region>"


class EarlyRegion:
    """Bytes [0, size) of ``blob``, fetched by ``run`` in pieces of ``first_piece`` then
    ``piece`` bytes, ``concurrency`` at a time; counted in ``stats`` as they arrive."""

    def __init__(
        self,
        blob: RemoteBlob,
        size: int,
        stats: LayerStats,
        where: str,
        *,
        first_piece: int,
        piece: int,
        concurrency: int,
    ) -> None:
        self.size = size
        self._blob = blob
        self._stats = stats
        self._where = where
        self._concurrency = concurrency
        self._bounds = piece_bounds(size, first_piece, piece)
        self._pieces: list[bytes | None] = [None] * len(self._bounds)
        self._failures: list[BaseException | None] = [None] * len(self._bounds)
        self._arrived = [trio.Event() for _ in self._bounds]
        self._scope = trio.CancelScope()

    async def run(self) -> None:
        """Fetch every piece; a piece that fails (or is never fetched, after ``cancel``)
        fails only the reads that need it, never this task."""
        try:
            with self._scope:
                await in_order(iter(range(len(self._bounds))), self._concurrency, self._fetch)
        finally:
            for position, arrived in enumerate(self._arrived):
                if not arrived.is_set():
                    self._failures[position] = RegistryError(
                        f"{self._where}: prefetch region fetch stopped"
                    )
                    arrived.set()

    def cancel(self) -> None:
        """Stop fetching and drop what came (the layer did not open, or is done with it)."""
        self._scope.cancel()
        self._pieces = [None] * len(self._bounds)

    def covers(self, ranges: Sequence[tuple[int, int]]) -> bool:
        return all(offset >= 0 and offset + length <= self.size for offset, length in ranges)

    async def read_ranges(self, ranges: Sequence[tuple[int, int]]) -> list[bytes]:
        """The bytes of each (offset, length) range, once the pieces holding it arrived;
        RegistryError when one of them could not be fetched."""
        return [await self._read(offset, length) for offset, length in ranges]

    async def _read(self, offset: int, length: int) -> bytes:
        parts = []
        end = offset + length
        for position, (start, stop) in enumerate(self._bounds):
            if stop <= offset or start >= end:
                continue
            await self._arrived[position].wait()
            failure = self._failures[position]
            piece = self._pieces[position]
            if failure is not None or piece is None:
                raise RegistryError(
                    f"{self._where}: prefetch region bytes {start}-{stop}: {failure or 'dropped'}"
                )
            parts.append(piece[max(offset, start) - start : min(end, stop) - start])
        return b"".join(parts)

    async def _fetch(self, position: int) -> None:
        start, stop = self._bounds[position]
        started = time.perf_counter()
        try:
            piece = await self._blob.read_at(start, stop - start)
            if len(piece) != stop - start:
                raise RegistryError(f"got {len(piece)} bytes for {stop - start}")
        except Exception as exc:  # only a head start: the layer fetches on its own
            log.debug("%s: region piece %d-%d failed", self._where, start, stop, exc_info=True)
            self._failures[position] = exc
        else:
            self._pieces[position] = piece
            self._stats.requests += 1
            self._stats.bytes_fetched += len(piece)
            trace_fetch(self._where, started, (TRACE_LABEL,), len(piece))
        finally:
            self._stats.fetch_seconds += time.perf_counter() - started
            self._arrived[position].set()


def piece_bounds(size: int, first_piece: int, piece: int) -> list[tuple[int, int]]:
    """The (start, stop) of the pieces [0, size) is fetched in: one request each."""
    bounds = []
    start = 0
    length = first_piece
    while start < size:
        stop = min(size, start + length)
        bounds.append((start, stop))
        start, length = stop, piece
    return bounds
