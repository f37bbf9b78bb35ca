"""A small in-memory LRU of decompressed chunks, bounded in bytes.

FUSE reads a file in 128 KiB pieces; without this, each piece of a 4 MiB chunk
would go back to the disk cache (and its integrity check) 32 times. Used from
the trio thread only, so it needs no lock.
"""

from __future__ import annotations

from collections import OrderedDict

DEFAULT_MEMORY_BYTES = 32 << 20


class ChunkMemory:
    def __init__(self, max_bytes: int = DEFAULT_MEMORY_BYTES) -> None:
        self.max_bytes = max_bytes
        self._chunks: OrderedDict[str, bytes] = OrderedDict()
        self._bytes = 0

    def get(self, digest: str) -> bytes | None:
        data = self._chunks.get(digest)
        if data is not None:
            self._chunks.move_to_end(digest)
        return data

    def put(self, digest: str, data: bytes) -> None:
        if len(data) > self.max_bytes:
            return
        old = self._chunks.pop(digest, None)
        if old is not None:
            self._bytes -= len(old)
        self._chunks[digest] = data
        self._bytes += len(data)
        while self._bytes > self.max_bytes:
            _, evicted = self._chunks.popitem(last=False)
            self._bytes -= len(evicted)

    def __contains__(self, digest: object) -> bool:
        return digest in self._chunks  # no recency update: a peek

    def __len__(self) -> int:
        return len(self._chunks)
