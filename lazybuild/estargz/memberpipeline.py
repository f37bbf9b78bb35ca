"""Compressing gzip members in parallel and writing them in order with bounded memory.

Members are compressed independently, so their compressed bytes do not depend on
how many threads do the work: the output is identical for any ``workers``. Small
members are batched into one job to keep per-task overhead low; at most
``max_pending_bytes`` of uncompressed input is in flight at any time.
"""

from __future__ import annotations

import hashlib
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from typing import BinaryIO

from lazybuild.estargz.gzipmembers import compress_member

_BATCH_BYTES = 1 << 20
_BATCH_MEMBERS = 512


# A member is given as its parts (payload, padding, following headers) so that a
# multi-megabyte chunk is not copied in the producing thread; joining happens here.
Member = list[bytes]


def _compress_batch(members: list[Member], level: int) -> list[bytes]:
    return [compress_member(m[0] if len(m) == 1 else b"".join(m), level) for m in members]


class OrderedMemberWriter:
    """Accepts uncompressed members in order; writes their gzip form to ``out`` in order.

    Tracks the compressed start offset of every member, the size and sha256 of
    everything written (the blob digest).
    """

    def __init__(
        self, out: BinaryIO, level: int, workers: int, max_pending_bytes: int = 64 << 20
    ) -> None:
        self._out = out
        self._level = level
        self._pool = ThreadPoolExecutor(workers, "estargz-gzip") if workers > 1 else None
        self._max_pending = max(max_pending_bytes, 2 * _BATCH_BYTES)
        self._pending: deque[tuple[Future[list[bytes]], int]] = deque()
        self._pending_bytes = 0
        self._batch: list[Member] = []
        self._batch_bytes = 0
        self.member_offsets: list[int] = []  # compressed offset of each written member
        self.member_count = 0  # members accepted so far (written or not)
        self.written = 0
        self._blob_hash = hashlib.sha256()

    def add(self, member: Member, size: int) -> int:
        """Queue one member of ``size`` bytes; returns its index (offset known after ``flush``)."""
        index = self.member_count
        self.member_count += 1
        self._batch.append(member)
        self._batch_bytes += size
        if self._batch_bytes >= _BATCH_BYTES or len(self._batch) >= _BATCH_MEMBERS:
            self._submit_batch()
        return index

    def _submit_batch(self) -> None:
        if not self._batch:
            return
        batch, size = self._batch, self._batch_bytes
        self._batch, self._batch_bytes = [], 0
        if self._pool is None:
            self._write_results(_compress_batch(batch, self._level))
            return
        self._pending.append((self._pool.submit(_compress_batch, batch, self._level), size))
        self._pending_bytes += size
        while self._pending_bytes > self._max_pending:
            self._write_oldest()

    def _write_oldest(self) -> None:
        future, size = self._pending.popleft()
        self._pending_bytes -= size
        self._write_results(future.result())

    def _write_results(self, compressed: list[bytes]) -> None:
        for member in compressed:
            self.member_offsets.append(self.written)
            self._write(member)

    def _write(self, data: bytes) -> None:
        self._out.write(data)
        self._blob_hash.update(data)
        self.written += len(data)

    def flush(self) -> None:
        """Write every queued member (their offsets are then all known)."""
        self._submit_batch()
        while self._pending:
            self._write_oldest()

    def write_raw(self, data: bytes) -> None:
        """Append bytes that are already in final form (the footer)."""
        self.flush()
        self._write(data)

    def blob_digest(self) -> str:
        return "sha256:" + self._blob_hash.hexdigest()

    def close(self) -> None:
        """Write everything still queued and stop the worker threads."""
        try:
            self.flush()
        finally:
            self.abort()

    def abort(self) -> None:
        """Stop the worker threads, dropping queued members (after an error)."""
        self._pending.clear()
        self._batch = []
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
