"""Lazy layers that are whole on this machine, kept as complete EROFS image files that
the kernel mounts by itself.

Once every chunk of a lazy layer is on disk, nothing about it needs the filesystem
process: ``write_whole_image`` writes ``<state>/erofs/<TOC hex>.<writer>.image``, the
layer's EROFS image with its data in place (the bytes the FUSE image file serves), and
the next process that opens the layer mounts that file (``find_whole_image``) instead
of fetching its TOC, indexing it and serving its reads. A warm build then reads its base
layers the way docker reads unpacked ones, from one local file whose page cache
outlives each build's mount.

Trust. An image is written only from chunks that hash to their TOC digests again as
they are copied (the chunk cache's CRC guards its storage, this re-proves the chain
manifest -> TOC digest -> chunks); it is flushed to disk before it is renamed into
place, so an image that exists is whole. Before use, its superblock must carry the UUID
derived from the TOC digest and its length the superblock's block count. The name
carries a fingerprint of the code that writes images, so a new writer never mounts an
old writer's image. Like the rest of the state directory, the files are trusted
against accidents, not against someone who can write there.

Bounded. Images beyond ``max_bytes`` (the chunk cache's bound) are removed, least
recently mounted first. A mount holds its file open, so removing an image (eviction,
``prune``) never disturbs one in use.

Not read by the filesystem process, these layers are not seen by its read recorder:
learned reads keep what earlier runs recorded, and a workload's places read in big
files are found from the page cache instead (``lazyfs.pagesread``).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import re
import struct
import tempfile
import threading
import time
from pathlib import Path

from lazybuild.cache.chunkcache import TOUCH_INTERVAL, CacheUsage, ChunkCache
from lazybuild.erofs import ErofsLayout
from lazybuild.erofs.layout import image_uuid
from lazybuild.erofs.ondisk import (
    BLOCK_SIZE,
    MAGIC,
    SUPERBLOCK_OFFSET,
    SUPERBLOCK_SIZE,
    unpack_superblock,
)
from lazybuild.lazyfs.imagecache import (
    IMAGE_CACHE_DIR,
    STAGING_DIR,
    allocated_bytes,
    writer_fingerprint,
)
from lazybuild.state.processes import ProcessId

__all__ = [
    "WHOLE_IMAGE_SUFFIX",
    "find_whole_image",
    "prune",
    "usage",
    "whole_image_path",
    "write_whole_image",
]

log = logging.getLogger(__name__)

WHOLE_IMAGE_SUFFIX = ".image"
_FINGERPRINT_LENGTH = 16
_TOC_DIGEST = re.compile(r"sha256:([0-9a-f]{64})")
_IMAGE_NAME = re.compile(
    rf"[0-9a-f]{{64}}\.[0-9a-f]{{{_FINGERPRINT_LENGTH}}}{re.escape(WHOLE_IMAGE_SUFFIX)}"
)
# Copying in pieces this large keeps the writer's memory small for big files.
_COPY_BYTES = 8 << 20


class _IncompleteError(Exception):
    """The image cannot be written whole now (said why); nothing is kept."""


def whole_image_path(state_dir: Path, toc_digest: str | None) -> Path | None:
    """Where the whole image of ``toc_digest`` lives; None when none can be kept (no
    SHA-256 TOC digest, or the writer's code cannot be fingerprinted)."""
    match = _TOC_DIGEST.fullmatch(toc_digest or "")
    writer = writer_fingerprint()
    if match is None or writer is None:
        return None
    name = f"{match.group(1)}.{writer[:_FINGERPRINT_LENGTH]}{WHOLE_IMAGE_SUFFIX}"
    return state_dir / IMAGE_CACHE_DIR / name


def find_whole_image(state_dir: Path, toc_digest: str | None) -> Path | None:
    """The sound whole image of ``toc_digest``, or None. An image that fails its checks
    is removed. (One evicted by another process before it is mounted fails the mount:
    the caller then serves the layer lazily.)"""
    path = whole_image_path(state_dir, toc_digest)
    if path is None or toc_digest is None:
        return None
    try:
        descriptor = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    except OSError as exc:
        log.info("whole image %s cannot be opened (%s): serving the layer lazily", path, exc)
        return None
    try:
        problem = _problem(descriptor, toc_digest)
        if problem is None:
            _touch(descriptor)
            return path
    except OSError as exc:
        problem = f"cannot be read ({exc})"
    finally:
        os.close(descriptor)
    log.warning("whole image %s %s: removed, serving the layer lazily", path, problem)
    with contextlib.suppress(OSError):
        path.unlink()
    return None


def write_whole_image(
    state_dir: Path,
    toc_digest: str | None,
    layout: ErofsLayout,
    cache: ChunkCache,
    *,
    max_bytes: int,
    stopping: threading.Event | None = None,
) -> Path | None:
    """Write the whole image of the layer ``layout`` presents from ``cache``, which must
    hold all its chunks; the image's path, or None when it could not be had (a chunk
    missing or failing its digest, ``stopping`` set, a full disk): then nothing is
    left behind. Blocking: call it in a worker thread."""
    path = whole_image_path(state_dir, toc_digest)
    if path is None:
        return None
    if path.exists():
        return path
    staging = state_dir / IMAGE_CACHE_DIR / STAGING_DIR
    started = time.perf_counter()
    temporary: str | None = None
    try:
        staging.mkdir(parents=True, exist_ok=True)
        descriptor, temporary = tempfile.mkstemp(
            dir=staging, prefix=f"{ProcessId.current().tag}-{path.name}.", suffix=".tmp"
        )
        try:
            _fill(descriptor, layout, cache, stopping or threading.Event())
            os.fsync(descriptor)
        finally:
            os.close(descriptor)
        os.replace(temporary, path)
        temporary = None
        _sync_directory(path.parent)
    except _IncompleteError as incomplete:
        log.info("layer of TOC %s: no whole image written: %s", toc_digest, incomplete)
        return None
    except OSError as exc:
        log.warning("layer of TOC %s: no whole image written: %s", toc_digest, exc)
        return None
    finally:
        if temporary is not None:
            with contextlib.suppress(OSError):
                os.unlink(temporary)
    log.info(
        "layer of TOC %s: whole image of %d bytes written in %.2fs",
        toc_digest,
        layout.image_size,
        time.perf_counter() - started,
    )
    _evict(state_dir / IMAGE_CACHE_DIR, max_bytes, keep=path)
    return path


def usage(state_dir: Path) -> CacheUsage:
    images = _images(state_dir / IMAGE_CACHE_DIR)
    return CacheUsage(len(images), sum(allocated_bytes(image) for image in images))


def prune(state_dir: Path, keep_bytes: int = 0) -> CacheUsage:
    """Remove whole images, least recently mounted first, until they take at most
    ``keep_bytes``; returns what was freed. Safe while they are mounted (a mount holds
    its file open)."""
    return _evict(state_dir / IMAGE_CACHE_DIR, keep_bytes, keep=None)


def _fill(
    descriptor: int, layout: ErofsLayout, cache: ChunkCache, stopping: threading.Event
) -> None:
    os.ftruncate(descriptor, layout.image_size)  # the gaps between files read as zeros
    _write_all(descriptor, layout.metadata, 0)
    for extent in layout.extents.extents:
        if stopping.is_set():
            raise _IncompleteError("stopped")
        node = extent.node
        covered = 0
        for chunk in node.chunks:
            data = cache.get(chunk.digest)
            if data is None:
                raise _IncompleteError(f"a chunk of /{node.name} is not cached")
            digest = "sha256:" + hashlib.sha256(data).hexdigest()
            if len(data) != chunk.size or digest != chunk.digest:
                raise _IncompleteError(f"a cached chunk of /{node.name} fails its digest")
            if chunk.chunk_offset != covered:
                raise _IncompleteError(f"the chunks of /{node.name} do not cover it in order")
            _write_all(descriptor, data, extent.offset + chunk.chunk_offset)
            covered += chunk.size
        if covered != extent.size:
            raise _IncompleteError(f"the chunks of /{node.name} hold {covered} of its bytes")


def _write_all(descriptor: int, data: bytes, offset: int) -> None:
    view = memoryview(data)
    while view:
        written = os.pwrite(descriptor, view[:_COPY_BYTES], offset)
        view, offset = view[written:], offset + written


def _problem(descriptor: int, toc_digest: str) -> str | None:
    head = os.pread(descriptor, SUPERBLOCK_OFFSET + SUPERBLOCK_SIZE, 0)
    try:
        superblock = unpack_superblock(head)
    except struct.error:
        return "is too short"
    if superblock.magic != MAGIC:
        return "is not an EROFS image"
    if superblock.uuid != image_uuid(toc_digest, b""):
        return "is the image of another TOC"
    if superblock.blocks * BLOCK_SIZE != os.fstat(descriptor).st_size:
        return "is not as long as its superblock says"
    return None


def _touch(descriptor: int) -> None:
    """Refresh the image's mtime, its recency for eviction, at most once a minute."""
    with contextlib.suppress(OSError):
        if time.time() - os.fstat(descriptor).st_mtime >= TOUCH_INTERVAL:
            os.utime(descriptor)


def _evict(root: Path, max_bytes: int, *, keep: Path | None) -> CacheUsage:
    """Remove images, oldest mtime first (but ``keep``), until at most ``max_bytes``."""
    images = []
    for image in _images(root):
        with contextlib.suppress(FileNotFoundError):
            images.append((image.stat().st_mtime, allocated_bytes(image), image))
    total = sum(size for _, size, _ in images)
    removed = freed = 0
    for _, size, image in sorted(images):
        if total <= max_bytes:
            break
        if image == keep:
            continue
        try:
            image.unlink()
        except FileNotFoundError:
            continue  # another process was first
        log.info("whole image %s removed (whole images over %d bytes)", image, max_bytes)
        total, removed, freed = total - size, removed + 1, freed + size
    return CacheUsage(removed, freed)


def _sync_directory(directory: Path) -> None:
    descriptor = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def _images(root: Path) -> list[Path]:
    try:
        return [path for path in root.iterdir() if _IMAGE_NAME.fullmatch(path.name)]
    except FileNotFoundError:
        return []
