"""ChunkCache: round trip, atomic entries, damage detection, LRU eviction, prune, usage."""

from __future__ import annotations

import hashlib
import os
import threading
import time
from pathlib import Path

import pytest

from lazybuild.cache import chunkcache
from lazybuild.cache.chunkcache import CacheUsage, ChunkCache


def digest_of(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def entry_path(cache: ChunkCache, digest: str) -> Path:
    hex_digest = digest.split(":", 1)[1]
    return cache.root / "chunks" / "sha256" / hex_digest[:2] / hex_digest


def age(path: Path, seconds: float) -> None:
    then = time.time() - seconds
    os.utime(path, (then, then))


def test_put_get_round_trip_and_layout(tmp_path: Path) -> None:
    cache = ChunkCache(tmp_path)
    data = b"chunk data" * 1000
    digest = digest_of(data)
    assert cache.get(digest) is None
    cache.put(digest, data)
    assert cache.get(digest) == data
    assert entry_path(cache, digest).is_file()
    assert cache.contains(digest)
    assert list((tmp_path / "staging").iterdir()) == []
    assert cache.get(digest_of(b"other")) is None


def test_bad_digest_names_are_rejected(tmp_path: Path) -> None:
    cache = ChunkCache(tmp_path)
    with pytest.raises(ValueError):
        cache.get("sha256:../../etc/passwd")
    with pytest.raises(ValueError):
        cache.put("md5:abc", b"")


def test_empty_chunk(tmp_path: Path) -> None:
    cache = ChunkCache(tmp_path)
    cache.put(digest_of(b""), b"")
    assert cache.get(digest_of(b"")) == b""


@pytest.mark.parametrize(
    "damage",
    [
        lambda raw: raw[: len(raw) // 2],  # torn write: data blocks lost
        lambda raw: b"\0" * len(raw),  # zero-filled after a crash
        lambda raw: raw[:-1] + bytes([raw[-1] ^ 1]),  # a flipped bit
        lambda raw: b"",
    ],
)
def test_damaged_entry_reads_as_a_miss_and_is_removed(tmp_path: Path, damage) -> None:  # type: ignore[no-untyped-def]
    cache = ChunkCache(tmp_path)
    data = os.urandom(5000)
    digest = digest_of(data)
    cache.put(digest, data)
    path = entry_path(cache, digest)
    path.write_bytes(damage(path.read_bytes()))
    assert cache.get(digest) is None
    assert not path.exists()


def test_crash_leftovers_in_staging_are_removed_at_open(tmp_path: Path) -> None:
    ChunkCache(tmp_path)
    dead = tmp_path / "staging" / "999999999-abcd.tmp"  # no such pid
    stray = tmp_path / "staging" / "garbage"
    live = tmp_path / "staging" / f"{os.getpid()}-beef.tmp"  # a live writer's file
    for path in (dead, stray, live):
        path.write_bytes(b"half a chunk")
    cache = ChunkCache(tmp_path)
    assert not dead.exists()
    assert not stray.exists()
    assert live.exists()
    assert cache.usage() == CacheUsage(0, 0)


def test_failed_write_leaves_no_entry(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cache = ChunkCache(tmp_path)
    data = b"x" * 100
    digest = digest_of(data)

    def fail(source: str, target: str) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(os, "rename", fail)
    with pytest.raises(OSError):
        cache.put(digest, data)
    monkeypatch.undo()
    assert cache.get(digest) is None
    assert list((tmp_path / "staging").iterdir()) == []


def test_usage_counts_entries_and_bytes(tmp_path: Path) -> None:
    cache = ChunkCache(tmp_path)
    blobs = [os.urandom(1000 * (i + 1)) for i in range(3)]
    for data in blobs:
        cache.put(digest_of(data), data)
    usage = cache.usage()
    assert usage.entries == 3
    assert sum(len(b) for b in blobs) <= usage.bytes <= sum(len(b) for b in blobs) + 3 * 64
    assert ChunkCache(tmp_path).usage() == usage  # a new instance sees the same


def test_prune_evicts_least_recently_used_first(tmp_path: Path) -> None:
    cache = ChunkCache(tmp_path)
    blobs = {name: os.urandom(1000) for name in "abcd"}
    for offset, (_name, data) in enumerate(blobs.items()):
        cache.put(digest_of(data), data)
        age(entry_path(cache, digest_of(data)), 1000 - offset * 100)  # a oldest, d newest
    assert cache.get(digest_of(blobs["a"])) == blobs["a"]  # a hit makes "a" the newest
    entry_size = entry_path(cache, digest_of(blobs["b"])).stat().st_size
    freed = cache.prune(keep_bytes=2 * entry_size)
    assert freed == CacheUsage(2, 2 * entry_size)
    assert cache.get(digest_of(blobs["b"])) is None
    assert cache.get(digest_of(blobs["c"])) is None
    assert cache.get(digest_of(blobs["a"])) == blobs["a"]
    assert cache.get(digest_of(blobs["d"])) == blobs["d"]
    assert cache.prune() == CacheUsage(2, 2 * entry_size)
    assert cache.usage() == CacheUsage(0, 0)


def test_hits_touch_mtime_at_most_once_per_interval(tmp_path: Path) -> None:
    cache = ChunkCache(tmp_path)
    data = b"recency"
    digest = digest_of(data)
    cache.put(digest, data)
    path = entry_path(cache, digest)
    age(path, 10)
    before = path.stat().st_mtime
    cache.get(digest)
    assert path.stat().st_mtime == before  # recent enough: no metadata write
    age(path, chunkcache.TOUCH_INTERVAL + 5)
    cache.get(digest)
    assert time.time() - path.stat().st_mtime < 5


def test_put_evicts_when_over_the_limit_with_headroom(tmp_path: Path) -> None:
    cache = ChunkCache(tmp_path, max_bytes=10_500)
    first = [os.urandom(1000) for _ in range(10)]
    for index, data in enumerate(first):
        cache.put(digest_of(data), data)
        age(entry_path(cache, digest_of(data)), 1000 - index)
    assert cache.usage().entries == 10  # 10 x (1000 + header) fits
    newest = os.urandom(1000)
    cache.put(digest_of(newest), newest)
    usage = cache.usage()
    assert usage.bytes <= 10_500 * (1 - chunkcache.EVICTION_HEADROOM)
    assert cache.get(digest_of(newest)) == newest
    assert cache.get(digest_of(first[0])) is None  # the oldest went first
    assert cache.get(digest_of(first[-1])) == first[-1]


def test_a_reopened_cache_counts_what_it_holds_on_its_first_put(tmp_path: Path) -> None:
    # Opening does not walk the entries (every mount would wait for it); the first put
    # does, so entries left by an earlier process still count towards the limit.
    earlier = ChunkCache(tmp_path)
    first = [os.urandom(1000) for _ in range(10)]
    for index, data in enumerate(first):
        earlier.put(digest_of(data), data)
        age(entry_path(earlier, digest_of(data)), 1000 - index)
    cache = ChunkCache(tmp_path, max_bytes=10_500)
    assert cache.get(digest_of(first[0])) == first[0]
    age(entry_path(cache, digest_of(first[0])), 1000)  # still the oldest
    newest = os.urandom(1000)
    cache.put(digest_of(newest), newest)
    assert cache.usage().bytes <= 10_500 * (1 - chunkcache.EVICTION_HEADROOM)
    assert cache.get(digest_of(newest)) == newest
    assert cache.get(digest_of(first[0])) is None


def test_concurrent_puts_and_gets_from_threads(tmp_path: Path) -> None:
    cache = ChunkCache(tmp_path, max_bytes=200_000)
    payloads = [os.urandom(3000 + i) for i in range(40)]
    errors: list[BaseException] = []

    def work(seed: int) -> None:
        try:
            for i in range(len(payloads)):
                data = payloads[(i + seed) % len(payloads)]
                cache.put(digest_of(data), data)
                got = cache.get(digest_of(data))
                assert got is None or got == data
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(seed,)) for seed in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert cache.usage().bytes <= 200_000
    assert list((tmp_path / "staging").iterdir()) == []


def test_held_chunks_read_at_once_and_reach_the_disk_when_written(tmp_path: Path) -> None:
    cache = ChunkCache(tmp_path)
    chunks = {digest_of(data): data for data in (b"one" * 50, b"two" * 70)}
    cache.hold(chunks)
    for digest, data in chunks.items():
        assert cache.contains(digest) and cache.get(digest) == data
    assert cache.usage() == CacheUsage(0, 0)  # nothing on disk yet
    cache.write_held(list(chunks))
    fresh = ChunkCache(tmp_path)  # another process sees what was written
    for digest, data in chunks.items():
        assert fresh.get(digest) == data
    assert fresh.usage().entries == 2


def test_held_chunks_that_cannot_be_written_are_let_go(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = ChunkCache(tmp_path)
    data = b"x" * 100
    digest = digest_of(data)
    cache.hold({digest: data})

    def fail(source: str, target: str) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(os, "rename", fail)
    with pytest.raises(OSError):
        cache.write_held([digest])
    monkeypatch.undo()
    assert not cache.contains(digest)  # a miss, not a chunk held forever
    assert list((tmp_path / "staging").iterdir()) == []
