"""Which files of which layers a step read: the memory behind learned prefetching.

The filesystem tells the recorder of every open and read. A client takes a ``mark``
before a step runs and asks, after it, for the files read ``since`` that mark, in the
order they were first read. Several steps may run at once; each sees the files read
while it ran (its own, and any a concurrent step read), which is what a prefetch hint
needs: a superset costs some bytes, never a wrong answer.

Files over ``PREFETCH_FILE_MAX_BYTES`` are never prefetched whole (a JVM reads a few
places of its 130 MB ``modules``), so for them the recorder also keeps which pieces
were read: ``ranges_since`` gives those places, for a prefetch of just them.
"""

from __future__ import annotations

from lazybuild.estargz.toc import PREFETCH_FILE_MAX_BYTES

# Beyond this many first reads the oldest are forgotten (a mark that old reads as 0).
MAX_EVENTS = 1_000_000
# A step that reads more than this (a whole image) is a poor prefetch hint past it anyway.
MAX_FILES_SINCE = 20_000
# The unit in which reads of big files are remembered: small next to a layer's chunks
# (4 MiB by default), so the chunks a prefetch picks are the ones read.
PIECE_BYTES = 64 << 10
# Past this many ranges in one big file, the rest is left to on-demand reads.
MAX_RANGES_PER_FILE = 4096

_WHOLE_FILE = -1  # the piece number of a file-level event
Ranges = list[tuple[int, int]]  # (offset, length) in the file, in first-read order


class ReadRecorder:
    def __init__(self, max_events: int = MAX_EVENTS) -> None:
        self._max_events = max_events
        # (layer, path, piece) first reads per epoch; piece is _WHOLE_FILE but for the
        # pieces of big files, which come after their file's own event.
        self._events: list[tuple[str, str, int]] = []
        self._dropped = 0  # events forgotten from the front
        self._epoch = 0
        self._epoch_of: dict[tuple[str, str, int], int] = {}

    def __call__(self, layer: str, path: str, offset: int, size: int, file_size: int) -> None:
        """An open (``size`` 0) or a read of ``path`` in ``layer`` (cheap: called on
        every FUSE read)."""
        self._note((layer, path, _WHOLE_FILE))
        if file_size > PREFETCH_FILE_MAX_BYTES and size > 0:
            for piece in range(offset // PIECE_BYTES, (offset + size - 1) // PIECE_BYTES + 1):
                self._note((layer, path, piece))

    def _note(self, key: tuple[str, str, int]) -> None:
        if self._epoch_of.get(key) != self._epoch:
            self._epoch_of[key] = self._epoch
            self._events.append(key)
            if len(self._events) > self._max_events:
                forget = len(self._events) // 2
                del self._events[:forget]
                self._dropped += forget

    def mark(self) -> int:
        """A point to ask ``since`` about; reads after it count even for files read before."""
        self._epoch += 1
        return self._dropped + len(self._events)

    def since(self, mark: int, limit: int = MAX_FILES_SINCE) -> dict[str, list[str]]:
        """By layer, the first ``limit`` files read since ``mark``, each once, in
        first-read order."""
        seen: set[tuple[str, str]] = set()
        files: dict[str, list[str]] = {}
        for layer, path, piece in self._events_since(mark):
            if len(seen) >= limit:
                break
            if piece == _WHOLE_FILE and (layer, path) not in seen:
                seen.add((layer, path))
                files.setdefault(layer, []).append(path)
        return files

    def ranges_since(self, mark: int) -> dict[str, dict[str, Ranges]]:
        """By layer and path, the places read since ``mark`` in files over
        ``PREFETCH_FILE_MAX_BYTES``: pieces in first-read order, neighbours joined."""
        pieces: dict[tuple[str, str], list[int]] = {}
        for layer, path, piece in self._events_since(mark):
            if piece != _WHOLE_FILE:
                pieces.setdefault((layer, path), []).append(piece)
        ranges: dict[str, dict[str, Ranges]] = {}
        for (layer, path), numbers in pieces.items():
            ranges.setdefault(layer, {})[path] = _joined(numbers)[:MAX_RANGES_PER_FILE]
        return ranges

    def _events_since(self, mark: int) -> list[tuple[str, str, int]]:
        return self._events[max(0, mark - self._dropped) :]


def _joined(pieces: list[int]) -> Ranges:
    """Pieces (each once, in read order) as byte ranges; a piece right after the
    previous one extends its range."""
    ranges: Ranges = []
    previous: int | None = None
    for piece in dict.fromkeys(pieces):
        if previous is not None and piece == previous + 1:
            offset, length = ranges[-1]
            ranges[-1] = (offset, length + PIECE_BYTES)
        else:
            ranges.append((piece * PIECE_BYTES, PIECE_BYTES))
        previous = piece
    return ranges
