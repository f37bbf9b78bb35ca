"""How far past a missed chunk to fetch: read-ahead across the files of a layer.

A tar keeps the files of a directory together, and builds read them that way (a
compiler walking a package, a loader its libraries), one small file at a time. Over a
WAN each miss costs a round trip, so a reader walking the layer in order should get its
next files in the same request. Like the kernel's read-ahead, the window opens only
for a reader that proves sequential (a miss right after what the last request of its
stream fetched) and doubles while it stays so; a miss anywhere else opens nothing, so
random readers fetch no more than they ask for. Several streams are followed at once:
parallel compilers walk different directories.

Only a miss that enters a file (its first chunk) proves a walk across files. A reader
going through one big file in order (a program loaded, a library mapped) also misses
right after the last fetch, chunk after chunk, but says nothing about the files after
it: such a miss continues its stream without opening or widening the window (the rest
of such a file is ``miss_readahead``'s business). And one miss is one step however many
reads report it: the kernel splits its read-ahead of a file into several reads that
arrive together and miss the same chunk; counted as steps, each doubled the window and
fetched a further stretch of unrelated files, more the more of them won the race.
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
    step: int  # where the stream's last miss starts
    end: int  # how far it has fetched (or is about to)
    window: int

    def holds(self, offset: int) -> bool:
        """A miss at ``offset`` is the last step's own (reported again)."""
        return self.step <= offset < self.end

    def continued_by(self, offset: int) -> bool:
        return self.end <= offset <= self.end + max(self.window, SLACK)


class NeighbourWindow:
    def __init__(self) -> None:
        self._streams: list[_Stream] = []  # most recently used last

    def extent(self, start: int, end: int, *, enters_file: bool) -> int:
        """Compressed bytes to fetch beyond the missed chunks [``start``, ``end``) of the
        blob: 0 unless the miss continues a stream and ``enters_file``. The miss counts
        as fetched up to ``end`` from now on, so that a read of the same chunks arriving
        before its request goes out is known for the same step."""
        for position, stream in enumerate(self._streams):
            if stream.holds(start):
                stream.end = max(stream.end, end)
                self._use(position)
                return 0
            if stream.continued_by(start):
                stream.step, stream.end = start, max(stream.end, end)
                self._use(position)
                if not enters_file:
                    return 0
                stream.window = min(max(stream.window * 2, FIRST_WINDOW), MAX_WINDOW)
                return stream.window
        self._streams.append(_Stream(step=start, end=end, window=0))
        del self._streams[:-STREAMS]
        return 0

    def fetched(self, start: int, end: int) -> None:
        """The request for the miss at ``start`` fetched up to blob offset ``end``."""
        for stream in self._streams:
            if stream.holds(start):
                stream.end = max(stream.end, end)
                return

    def _use(self, position: int) -> None:
        self._streams.append(self._streams.pop(position))
