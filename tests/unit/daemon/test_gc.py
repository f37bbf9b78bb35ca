"""The daemon's [gc] policy on a real chunk cache."""

from __future__ import annotations

import hashlib
import os
import time
from datetime import timedelta
from pathlib import Path

from lazybuild.cache.chunkcache import ChunkCache
from lazybuild.daemon.config import GCPolicy
from lazybuild.daemon.gc import collect


def _put(cache: ChunkCache, data: bytes, age_seconds: float) -> str:
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    cache.put(digest, data)
    path = cache.root / "chunks" / "sha256" / digest[7:9] / digest[7:]
    then = time.time() - age_seconds
    os.utime(path, (then, then))
    return digest


def test_keep_duration_removes_chunks_unused_for_longer(tmp_path: Path) -> None:
    cache = ChunkCache(tmp_path / "cache")
    old = _put(cache, b"old" * 1000, age_seconds=3 * 86400)
    recent = _put(cache, b"recent" * 1000, age_seconds=60)
    freed = collect(tmp_path, GCPolicy(keep_duration=timedelta(days=1)))
    assert [(e.label, e.count) for e in freed] == [("chunks unused for 1d", 1)]
    fresh = ChunkCache(tmp_path / "cache")
    assert fresh.get(old) is None
    assert fresh.get(recent) == b"recent" * 1000


def test_keep_bytes_is_prune_keep_storage(tmp_path: Path) -> None:
    cache = ChunkCache(tmp_path / "cache")
    oldest = _put(cache, b"a" * 10000, age_seconds=300)
    newest = _put(cache, b"b" * 10000, age_seconds=10)
    (tmp_path / "tocs").mkdir()  # kept: only a full prune forgets TOCs
    freed = collect(tmp_path, GCPolicy(keep_bytes=15000))
    assert freed[0].label == "chunks" and freed[0].count == 1
    fresh = ChunkCache(tmp_path / "cache")
    assert fresh.get(oldest) is None
    assert fresh.get(newest) is not None
    assert (tmp_path / "tocs").is_dir()


def test_no_policy_does_nothing(tmp_path: Path) -> None:
    cache = ChunkCache(tmp_path / "cache")
    kept = _put(cache, b"x", age_seconds=10 * 365 * 86400)
    assert collect(tmp_path, GCPolicy()) == []
    assert ChunkCache(tmp_path / "cache").get(kept) == b"x"
