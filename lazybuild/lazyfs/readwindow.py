"""How far past a missed chunk to fetch: read-ahead across the files of a layer.

A tar keeps the files of a directory together, and builds read them that way (a
compiler walking a package, a loader its libraries), one small file at a time. Over a
WAN each miss costs a round trip, so a reader walking the layer in order should get its
next files in the same request. Like the kernel's read-ahead, the window opens only
for a reader that proves sequential (a miss right after what the last request of its
stream fetched) and doubles while it stays so; a miss anywhere else opens nothing, so
random readers fetch no more than they ask for. Several streams are followed at once:
parallel compilers walk different directories.
"""

from __future__ import annotations

from dataclasses import dataclass

# The first window of a stream that proved sequential, and its limit (compressed bytes).
FIRST_WINDOW = 256 << 10
MAX_WINDOW = 4 << 20
# A miss this far past a stream's end still continues it (a small file skipped).
SLACK = 64 << 10
STREAMS = 8


@dataclass
class _Stream:
    end: int
    window: int


class NeighbourWindow:
    def __init__(self) -> None:
        self._streams: list[_Stream] = []  # most recently used last

    def extent(self, miss_offset: int) -> int:
        """Compressed bytes to fetch beyond the missed chunks that start at
        ``miss_offset`` (0 when the miss does not continue a stream)."""
        for position, stream in enumerate(self._streams):
            if stream.end <= miss_offset <= stream.end + max(stream.window, SLACK):
                del self._streams[position]
                stream.window = min(max(stream.window * 2, FIRST_WINDOW), MAX_WINDOW)
                self._streams.append(stream)
                return stream.window
        return 0

    def fetched(self, miss_offset: int, end: int) -> None:
        """A request for the miss at ``miss_offset`` fetched up to blob offset ``end``."""
        for stream in self._streams:
            if stream.end <= miss_offset <= stream.end + max(stream.window, SLACK):
                stream.end = max(stream.end, end)
                return
        self._streams.append(_Stream(end=end, window=0))
        del self._streams[:-STREAMS]
