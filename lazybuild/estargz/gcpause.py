"""Holding off Python's cyclic garbage collector while a TOC becomes an index or an image.

Opening a layer makes a few objects per TOC entry (entries, nodes, inodes), ~100,000
for a 15,000-file layer, all kept or freed by reference counting. Every 700 of them
set off a young collection, and the survivors promote until a full collection walks
the whole heap (every layer already open included): on the golang builder's layer,
collections took ~40% of the time to parse its TOC and build its EROFS image. Nothing
cyclic becomes garbage meanwhile, so collecting can wait until the work is done.

The collector's switch is the process's: pauses from several threads (layers open in
parallel worker threads) are counted, and the collector is switched on again when the
last one ends, and only if it was on when the first began.
"""

from __future__ import annotations

import gc
import threading
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["collector_paused"]


class _Pauses:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.depth = 0
        self.was_enabled = False


_pauses = _Pauses()


@contextmanager
def collector_paused() -> Iterator[None]:
    """No cyclic garbage collection inside the block (reference counting goes on)."""
    with _pauses.lock:
        if _pauses.depth == 0:
            _pauses.was_enabled = gc.isenabled()
            gc.disable()
        _pauses.depth += 1
    try:
        yield
    finally:
        with _pauses.lock:
            _pauses.depth -= 1
            if _pauses.depth == 0 and _pauses.was_enabled:
                gc.enable()
