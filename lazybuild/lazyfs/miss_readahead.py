"""What comes along when a read misses: the chunks its reader will probably want next.

Over a WAN each miss costs a round trip, and builds read many small files. On a miss,
before its own request goes out: the neighbours in the blob of a reader walking the
layer in order, file after file (``readwindow.NeighbourWindow``; a reader going through
one big file proves nothing about the files after it), the nearest small files of a directory
missed for the first time, and the rest of a file missed in a second chunk. Neighbours
and siblings go in a request of their own next to the reader's, so the reader waits
for its own chunks only; the rest of a file goes as a prefetch.
"""

from __future__ import annotations

import bisect
import posixpath
from collections.abc import Sequence

from lazybuild.estargz.index import LayerIndex
from lazybuild.lazyfs.chunk_fetcher import ChunkFetcher
from lazybuild.lazyfs.chunk_site import ChunkSite, LayerSites, sites_of
from lazybuild.lazyfs.prefetch import Prefetcher
from lazybuild.lazyfs.readwindow import NeighbourWindow

# A file missed twice is fetched whole up to this size (uncompressed): see _rest_of_files.
WHOLE_FILE_MAX_BYTES = 64 << 20
# The first miss in a directory also fetches its nearest small files (see _siblings).
SIBLING_FILE_MAX_BYTES = 256 << 10  # uncompressed size of a file that comes along
SIBLING_BUDGET_BYTES = 256 << 10  # compressed bytes per directory


class MissReadAhead:
    def __init__(
        self, fetcher: ChunkFetcher, index: LayerIndex, sites: LayerSites, prefetcher: Prefetcher
    ) -> None:
        self._fetcher = fetcher
        self._index = index
        self._sites = sites
        self._prefetcher = prefetcher
        self._window = NeighbourWindow()
        self._file_misses: dict[str, set[str]] = {}  # chunks a read had to fetch, per file
        self._directories_missed: set[str] = set()

    async def after_miss(self, missing: Sequence[ChunkSite]) -> None:
        """Claim and start fetching what should come along with ``missing``, which a
        reader is about to fetch (a ``chunk_fetcher.MissHandler``)."""
        neighbours = await self._neighbours(missing)
        neighbours += await self._siblings(missing, neighbours)
        rest_of_files = await self._rest_of_files(missing, neighbours)
        # Claimed by another reader while we looked at the disk: left to whoever took it.
        neighbours = [site for site in neighbours if not self._fetcher.in_flight(site.digest)]
        rest_of_files = [s for s in rest_of_files if not self._fetcher.in_flight(s.digest)]
        if neighbours:
            self._fetcher.fetch_alongside(neighbours)
        if rest_of_files:
            self._prefetcher.soon(rest_of_files)

    async def _neighbours(self, missing: Sequence[ChunkSite]) -> list[ChunkSite]:
        """The chunks after ``missing`` in the blob that a sequential reader will want
        next (``readwindow``): not cached, not being fetched, within the window."""
        start = min(site.chunk.offset for site in missing)
        end = max(site.chunk.end for site in missing)
        enters_file = any(site.chunk.chunk_offset == 0 for site in missing)
        extent = self._window.extent(start, end, enters_file=enters_file)
        candidates: list[ChunkSite] = []
        if extent:
            ordered = self._sites.by_offset()
            position = bisect.bisect_left(ordered, end, key=lambda site: site.chunk.offset)
            taken = {site.digest for site in missing}
            for site in ordered[position:]:
                if site.chunk.end > end + extent or self._fetcher.in_flight(site.digest):
                    break
                if site.digest not in taken and not self._fetcher.in_memory(site.digest):
                    candidates.append(site)
                    taken.add(site.digest)
        if candidates:
            candidates = await self._fetcher.to_fetch(candidates)
        last = max([end, *(site.chunk.end for site in candidates)])
        self._window.fetched(start, last)
        return candidates

    async def _siblings(
        self, missing: Sequence[ChunkSite], taken: Sequence[ChunkSite]
    ) -> list[ChunkSite]:
        """On the first miss in a directory, its small files nearest to the missed one.

        What opens one file of a directory soon opens others, and not in layer order:
        a compiler its headers (``#include`` order), a linker its ``crt*.o``, a program
        its ``/etc`` files; each would be a round trip. The read-ahead window only
        follows readers that walk forward. Files up to ``SIBLING_FILE_MAX_BYTES``, up
        to ``SIBLING_BUDGET_BYTES`` compressed, nearest in the blob first; once per
        directory, so a reader working through a directory costs nothing more."""
        skip = {site.digest for site in [*missing, *taken]}
        wanted: list[ChunkSite] = []
        for site in missing:
            directory = posixpath.dirname(site.file)
            if directory in self._directories_missed:
                continue
            self._directories_missed.add(directory)
            parent = self._index.lookup(directory)
            if parent is None:
                continue
            near = sorted(
                (
                    sibling
                    for child in parent.children.values()
                    if child.type == "reg" and child.size <= SIBLING_FILE_MAX_BYTES
                    for sibling in sites_of(child)
                    if sibling.digest not in skip and not self._fetcher.in_memory(sibling.digest)
                ),
                key=lambda near_site: abs(near_site.chunk.offset - site.chunk.offset),
            )
            budget = SIBLING_BUDGET_BYTES
            for sibling in near:
                if sibling.compressed_size > budget:
                    break
                if sibling.digest not in skip:
                    budget -= sibling.compressed_size
                    skip.add(sibling.digest)
                    wanted.append(sibling)
        return await self._fetcher.to_fetch(wanted) if wanted else []

    async def _rest_of_files(
        self, missing: Sequence[ChunkSite], taken: Sequence[ChunkSite]
    ) -> list[ChunkSite]:
        """The other chunks of files missed in a second chunk: a program mapping a
        large file (a compiler, a shared library) faults its chunks in, one after the
        other in no order that read-ahead can follow; after the second miss the rest of
        the file comes in large requests instead. Files above ``WHOLE_FILE_MAX_BYTES``
        are left to on-demand reads (a random reader of a big file fetches little)."""
        wanted: list[ChunkSite] = []
        skip = {site.digest for site in [*missing, *taken]}
        newly_twice = []
        first_per_file: dict[str, ChunkSite] = {}
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
            node = self._index.lookup(file)
            if node is None or node.size > WHOLE_FILE_MAX_BYTES:
                continue
            for site in sites_of(node):
                if site.digest not in skip and not self._fetcher.in_memory(site.digest):
                    skip.add(site.digest)
                    wanted.append(site)
        return await self._fetcher.to_fetch(wanted) if wanted else []
