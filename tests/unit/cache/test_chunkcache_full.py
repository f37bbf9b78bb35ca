"""A full disk under the chunk cache: reads go on from memory, nothing half-written stays."""

from __future__ import annotations

import errno
import hashlib
import os
from pathlib import Path

import pytest

from lazybuild.cache import chunkcache
from lazybuild.cache.chunkcache import ChunkCache


def chunk(n: int, size: int = 1000) -> tuple[str, bytes]:
    data = bytes([n % 256]) * size
    return "sha256:" + hashlib.sha256(data).hexdigest(), data


def test_chunks_a_full_disk_cannot_take_are_served_from_memory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    cache = ChunkCache(tmp_path)
    written = chunk(0)
    cache.put(*written)

    def full(fd: int, buffers: object) -> int:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "writev", full)
    pieces = dict(chunk(n) for n in range(1, 6))
    cache.hold(pieces)
    cache.write_held(list(pieces))  # no error: the cache is only a cache
    for digest, data in pieces.items():
        assert cache.get(digest) == data
        assert cache.contains(digest)
    assert cache.get(written[0]) == written[1]
    assert list((tmp_path / "staging").iterdir()) == []  # no temp file stays
    assert cache.usage().entries == 1
    assert sum("no space left" in record.message for record in caplog.records) == 1

    # While full, the disk is not tried again; once room is back (and the retry
    # interval over), chunks land on disk again.
    monkeypatch.undo()
    later = dict([chunk(7)])
    cache.hold(later)
    cache.write_held(list(later))
    assert cache.usage().entries == 1
    cache._full_until = 0.5  # the interval is over
    cache.hold(later)
    cache.write_held(list(later))
    assert cache.usage().entries == 2


def test_memory_fallback_is_bounded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(chunkcache, "MEMORY_FALLBACK_BYTES", 3000)
    cache = ChunkCache(tmp_path)
    cache._full_until = float("inf")
    pieces = dict(chunk(n) for n in range(5))
    cache.hold(pieces)
    cache.write_held(list(pieces))
    kept = [digest for digest in pieces if cache.get(digest) is not None]
    assert kept == list(pieces)[-3:]  # the oldest went first


def test_other_write_errors_still_raise(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cache = ChunkCache(tmp_path)

    def read_only(fd: int, buffers: object) -> int:
        raise OSError(errno.EROFS, os.strerror(errno.EROFS))

    monkeypatch.setattr(os, "writev", read_only)
    pieces = dict([chunk(1)])
    cache.hold(pieces)
    with pytest.raises(OSError):
        cache.write_held(list(pieces))
    assert cache.get(next(iter(pieces))) is None
