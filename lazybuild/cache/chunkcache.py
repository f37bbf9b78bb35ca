"""A content-addressed on-disk cache of decompressed, verified eStargz chunks.

Layout: ``<root>/chunks/sha256/ab/<hex>`` holds the chunk whose sha256 is ``ab<hex...>``;
``<root>/staging/`` holds files being written. An entry only ever appears by
``rename`` from staging, so a reader sees a whole entry or none.

Durability without fsync: each entry starts with a header carrying the payload's
length and CRC-32, and ``get`` checks both (zlib-ng's CRC runs at ~10 GB/s, against
~0.7 GB/s for re-hashing with sha256). After a power loss the rename may survive
while the data blocks do not; such a torn entry fails its check, is deleted and
reads as a miss. An fsync per put would instead cost one disk flush per chunk,
thousands for a layer of small files. The cache directory itself is trusted (it is
created 0700); the CRC guards against accidents, not against an attacker.

Recency for LRU eviction is the entry's mtime, refreshed on a hit at most once per
``TOUCH_INTERVAL`` so hot reads do not turn into metadata writes; atime is not used
because most file systems are mounted relatime or noatime.

A full disk (ENOSPC, EDQUOT) does not fail a read: the cache is only a cache. A chunk
that cannot be written is kept in memory instead, in a bounded LRU
(``MEMORY_FALLBACK_BYTES``), from which ``get`` serves it like any entry; past that
bound the oldest such chunks are dropped and fetched again when next read. After a
failed write the disk is not tried again for ``FULL_RETRY_SECONDS``, so a full disk
costs no syscalls per chunk; one warning says so. Nothing half-written stays: the
temp file of a failed write is removed, and entries still appear only by rename.

Several processes may share one cache. Each keeps its own running estimate of the
cache's size; eviction rescans the directory, so estimates only decide *when* to
evict, never *what*.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import re
import secrets
import struct
import threading
import time
from collections import OrderedDict
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from zlib_ng import zlib_ng

from lazybuild.state.processes import ProcessId, owner_alive

log = logging.getLogger(__name__)

DEFAULT_MAX_BYTES = 10 << 30
# Chunks a full disk could not take, kept in memory instead (see the module docstring).
MEMORY_FALLBACK_BYTES = 64 << 20
FULL_RETRY_SECONDS = 10.0
_NO_SPACE = frozenset({errno.ENOSPC, errno.EDQUOT})
TOUCH_INTERVAL = 60.0
# Eviction goes below the limit by this fraction so that it runs once per many puts.
EVICTION_HEADROOM = 0.1

_HEADER = struct.Struct(">4sIQ")  # magic, crc32 of the payload, payload length
_MAGIC = b"LBC1"
_DIGEST = re.compile(r"sha256:([0-9a-f]{64})")


@dataclass(frozen=True)
class CacheUsage:
    entries: int
    bytes: int


@dataclass(frozen=True)
class _Entry:
    path: Path
    size: int
    mtime: float


def _hex_of(digest: str) -> str:
    match = _DIGEST.fullmatch(digest)
    if match is None:
        raise ValueError(f"not a sha256 chunk digest: {digest!r}")
    return match.group(1)


class ChunkCache:
    """Thread-safe; every method does blocking disk I/O (call it from a worker thread)."""

    def __init__(self, root: Path, max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        self.root = root
        self.max_bytes = max_bytes
        self._chunks = root / "chunks" / "sha256"
        self._staging = root / "staging"
        self._chunks_str = str(self._chunks)
        self._staging_str = str(self._staging)
        # Verified chunks not written yet (``hold``), by digest; dict operations are
        # atomic, so the event loop and writer threads share it without a lock.
        self._held: dict[str, bytes] = {}
        # Chunks the disk had no room for, oldest first (guarded by _lock).
        self._unwritten: OrderedDict[str, bytes] = OrderedDict()
        self._unwritten_bytes = 0
        self._full_until = 0.0  # monotonic time before which the disk is not tried
        self._chunks.mkdir(parents=True, exist_ok=True)
        self._staging.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(OSError):
            root.chmod(0o700)
        self._remove_dead_staging_files()
        self._lock = threading.Lock()  # guards _estimated_bytes
        self._evicting = threading.Lock()
        # Counted on the first put, not here: a walk of every entry (0.1 s for some
        # thousand chunks, far more for a full cache) would delay every mount, and a
        # warm build that fetches nothing never needs the figure.
        self._estimated_bytes: int | None = None

    # -- public API ------------------------------------------------------------

    def get(self, digest: str) -> bytes | None:
        """The chunk named ``digest``, or None when it is absent or damaged (then removed)."""
        held = self._held.get(digest)
        if held is not None:
            return held
        if self._unwritten:
            with self._lock:
                kept = self._unwritten.get(digest)
                if kept is not None:
                    self._unwritten.move_to_end(digest)
                    return kept
        # os calls rather than pathlib and a buffered file: a warm build reads thousands
        # of small chunks through here, each on the path of a waiting FUSE read.
        hex_digest = _hex_of(digest)
        path = os.path.join(self._chunks_str, hex_digest[:2], hex_digest)
        try:
            descriptor = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return None
        try:
            status = os.fstat(descriptor)
            payload = _read_payload(descriptor, status.st_size)
            if payload is not None:
                self._touch(descriptor, status.st_mtime)
        finally:
            os.close(descriptor)
        if payload is None:
            self._discard(Path(path))
        return payload

    def contains(self, digest: str) -> bool:
        return digest in self._held or digest in self._unwritten or self._path(digest).exists()

    def hold(self, chunks: Mapping[str, bytes]) -> None:
        """Make verified ``chunks`` readable at once, from memory, and owe their write
        (``write_held``). Cheap enough for the event loop: whoever fetched a chunk wakes
        its readers without waiting for the disk, and nobody misses it meanwhile."""
        self._held.update(chunks)

    def write_held(self, digests: Sequence[str]) -> None:
        """Write the held chunks among ``digests`` to disk and let go of them. A full
        disk keeps them in memory instead (bounded); another OSError (a read-only disk)
        is raised and drops the rest: they are only a cache."""
        try:
            for digest in digests:
                data = self._held.get(digest)
                if data is None:
                    continue
                if time.monotonic() < self._full_until:
                    self._keep_in_memory(digest, data)
                    continue
                try:
                    self.put(digest, data)
                except OSError as exc:
                    if exc.errno not in _NO_SPACE:
                        raise
                    self._note_full(exc)
                    self._keep_in_memory(digest, data)
        finally:
            for digest in digests:
                self._held.pop(digest, None)

    def put(self, digest: str, data: bytes) -> None:
        """Store ``data`` (already verified by the caller) under ``digest``."""
        # Temp files are named by their writer, so a cleanup can tell a dead one's.
        # os calls rather than pathlib: a layer of small files puts thousands of chunks,
        # and pathlib's objects cost more than the syscalls themselves.
        hex_digest = _hex_of(digest)
        shard = os.path.join(self._chunks_str, hex_digest[:2])
        path = os.path.join(shard, hex_digest)
        if os.path.exists(path):
            return
        header = _HEADER.pack(_MAGIC, zlib_ng.crc32(data), len(data))
        staging = os.path.join(
            self._staging_str, f"{ProcessId.current().tag}-{secrets.token_hex(8)}.tmp"
        )
        try:
            descriptor = os.open(staging, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            try:
                written = os.writev(descriptor, [header, data])
                if written != len(header) + len(data):  # a short write: disk (nearly) full
                    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), staging)
            finally:
                os.close(descriptor)
            try:
                os.rename(staging, path)
            except FileNotFoundError:  # the shard's first entry
                os.makedirs(shard, exist_ok=True)
                os.rename(staging, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(staging)
            raise
        if self._grow_estimate(len(header) + len(data)):
            self._evict_if_idle(int(self.max_bytes * (1 - EVICTION_HEADROOM)))

    def usage(self) -> CacheUsage:
        entries = list(self._entries())
        total = sum(entry.size for entry in entries)
        with self._lock:
            self._estimated_bytes = total
        return CacheUsage(len(entries), total)

    def prune(self, keep_bytes: int = 0) -> CacheUsage:
        """Evict least recently used entries until at most ``keep_bytes`` remain; returns
        what was freed."""
        with self._evicting:
            return self._evict_to(keep_bytes)

    # -- internals -------------------------------------------------------------

    def _note_full(self, exc: OSError) -> None:
        first = self._full_until == 0.0
        self._full_until = time.monotonic() + FULL_RETRY_SECONDS
        if first:
            log.warning(
                "chunk cache %s: no space left (%s); chunks are kept in memory instead"
                " (up to %d MiB)",
                self.root,
                exc.strerror,
                MEMORY_FALLBACK_BYTES >> 20,
            )

    def _keep_in_memory(self, digest: str, data: bytes) -> None:
        with self._lock:
            if digest in self._unwritten:
                return
            self._unwritten[digest] = data
            self._unwritten_bytes += len(data)
            while self._unwritten_bytes > MEMORY_FALLBACK_BYTES and self._unwritten:
                _, dropped = self._unwritten.popitem(last=False)
                self._unwritten_bytes -= len(dropped)

    def _path(self, digest: str) -> Path:
        hex_digest = _hex_of(digest)
        return self._chunks / hex_digest[:2] / hex_digest

    def _touch(self, fd: int, mtime: float) -> None:
        now = time.time()
        if now - mtime >= TOUCH_INTERVAL:
            with contextlib.suppress(OSError):
                os.utime(fd, (now, now))

    def _discard(self, path: Path) -> None:
        with contextlib.suppress(OSError):
            size = path.stat().st_size
            path.unlink()
            with self._lock:
                if self._estimated_bytes is not None:
                    self._estimated_bytes -= size

    def _grow_estimate(self, added: int) -> bool:
        """Count ``added`` bytes in (the cache's size is walked the first time); whether
        the cache is now over its limit."""
        with self._lock:
            if self._estimated_bytes is not None:
                self._estimated_bytes += added
                return self._estimated_bytes > self.max_bytes
        counted = sum(entry.size for entry in self._entries())  # the new entry included
        with self._lock:
            if self._estimated_bytes is None:
                self._estimated_bytes = counted
            else:  # another writer counted meanwhile, perhaps before this entry was in
                self._estimated_bytes += added
            return self._estimated_bytes > self.max_bytes

    def _entries(self) -> Iterator[_Entry]:
        for shard in self._chunks.iterdir():
            if not shard.is_dir():
                continue
            with os.scandir(shard) as listing:
                for item in listing:
                    with contextlib.suppress(FileNotFoundError):
                        stat = item.stat(follow_symlinks=False)
                        yield _Entry(Path(item.path), stat.st_size, stat.st_mtime)

    def _evict_if_idle(self, target: int) -> None:
        # One evicting thread is enough; the others carry on storing.
        if self._evicting.acquire(blocking=False):
            try:
                self._evict_to(target)
            finally:
                self._evicting.release()

    def _evict_to(self, target: int) -> CacheUsage:
        entries = sorted(self._entries(), key=lambda entry: entry.mtime)
        remaining = sum(entry.size for entry in entries)
        freed_entries = freed_bytes = 0
        for entry in entries:
            if remaining <= target:
                break
            with contextlib.suppress(FileNotFoundError):
                entry.path.unlink()
                freed_entries += 1
                freed_bytes += entry.size
            remaining -= entry.size
        with self._lock:
            self._estimated_bytes = remaining
        return CacheUsage(freed_entries, freed_bytes)

    def _remove_dead_staging_files(self) -> None:
        """Leftovers of crashed writers; a live process's temp file is left alone."""
        for item in self._staging.iterdir():
            if not (item.name.endswith(".tmp") and owner_alive(item.name)):
                with contextlib.suppress(OSError):
                    item.unlink()


def _read_payload(fd: int, size: int) -> bytes | None:
    """The payload of the entry open as ``fd`` (``size`` bytes long), or None when it is
    torn or damaged: a header that does not match, a length other than the file's, or a
    CRC that does not."""
    header = os.read(fd, _HEADER.size)
    if len(header) != _HEADER.size:
        return None
    magic, crc, length = _HEADER.unpack(header)
    if magic != _MAGIC or size != _HEADER.size + length:
        return None
    payload = os.read(fd, length)
    while len(payload) < length:  # a read cut short: carry on from where it stopped
        more = os.read(fd, length - len(payload))
        if not more:
            return None
        payload += more
    if zlib_ng.crc32(payload) != crc:
        return None
    return payload
