"""Which files of which layers a step read: the memory behind learned prefetching.

The filesystem tells the recorder of every open and read. A client takes a ``mark``
before a step runs and asks, after it, for the files read ``since`` that mark, in the
order they were first read. Several steps may run at once; each sees the files read
while it ran (its own, and any a concurrent step read), which is what a prefetch hint
needs: a superset costs some bytes, never a wrong answer.
"""

from __future__ import annotations

# Beyond this many first reads the oldest are forgotten (a mark that old reads as 0).
MAX_EVENTS = 1_000_000
# A step that reads more than this (a whole image) is a poor prefetch hint past it anyway.
MAX_FILES_SINCE = 20_000


class ReadRecorder:
    def __init__(self, max_events: int = MAX_EVENTS) -> None:
        self._max_events = max_events
        self._events: list[tuple[str, str]] = []  # (layer, path), first reads per epoch
        self._dropped = 0  # events forgotten from the front
        self._epoch = 0
        self._epoch_of: dict[tuple[str, str], int] = {}

    def __call__(self, layer: str, path: str) -> None:
        """A read of ``path`` in ``layer`` (cheap: called on every FUSE read)."""
        key = (layer, path)
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
        start = max(0, mark - self._dropped)
        seen: set[tuple[str, str]] = set()
        files: dict[str, list[str]] = {}
        for key in self._events[start:]:
            if len(seen) >= limit:
                break
            if key not in seen:
                seen.add(key)
                files.setdefault(key[0], []).append(key[1])
        return files
