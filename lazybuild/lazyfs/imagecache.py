"""EROFS images of lazy layers kept in the state directory, by TOC digest.

Serving a lazy layer needs its EROFS image's metadata and extent table
(``lazybuild.erofs``); building them is Python work per inode, about 0.2 s for a
layer of 15,000 files and 0.8 s for 50,000, paid by every filesystem process that
opens the layer. ``layout_for`` keeps what it built in ``<state>/erofs/<TOC hex>.meta``
and puts the layout back together from that the next time (``erofs.restore_layout``:
no inode is placed or encoded again; 3 to 5 times faster, about 0.04 s and 0.27 s).

An entry is a cache, never an authority: it is used only when all of it hashes to the
SHA-256 recorded at its head (a torn, truncated or flipped entry is rebuilt), its
format is this one, it was written by the same code that would build the image now (a
fingerprint of the modules that turn a TOC into an image: any change to them, a new
lazybuild or an edit, makes older entries miss), it names the TOC digest asked for,
and its parts fit the layer's verified index (``restore_layout``'s checks, the
superblock's UUID derived from the TOC digest among them). The digest catches damage,
not a deliberate edit by someone who can write the state directory; such a writer can
already change unpacked layers and the build cache, which are served as they are.

Entries are written whole or not at all (``write_atomic``, through ``staging/``, which
the next write and ``prune`` clear of what dead processes left); without an fsync,
since a power cut that tears one only makes the digest fail. A filesystem process
keeps the layouts it serves in memory, so removing entries never disturbs a mount.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import logging
import re
import struct
from pathlib import Path
from types import ModuleType
from typing import Any

import lazybuild.erofs.extents
import lazybuild.erofs.layout
import lazybuild.erofs.ondisk
import lazybuild.erofs.stored
import lazybuild.erofs.tree
import lazybuild.estargz.index
import lazybuild.estargz.toc
from lazybuild.cache.chunkcache import CacheUsage
from lazybuild.erofs import (
    ErofsLayout,
    LayoutParts,
    LayoutStats,
    StoredLayoutError,
    build_layout,
    layout_parts,
    restore_layout,
)
from lazybuild.estargz.index import LayerIndex
from lazybuild.state.atomicfile import write_atomic
from lazybuild.state.processes import owner_alive

__all__ = [
    "ENTRY_SUFFIX",
    "IMAGE_CACHE_DIR",
    "MAGIC",
    "STAGING_DIR",
    "allocated_bytes",
    "decode_entry",
    "encode_entry",
    "entry_path",
    "layout_for",
    "remove_all",
    "usage",
    "writer_fingerprint",
]

log = logging.getLogger(__name__)

IMAGE_CACHE_DIR = "erofs"
STAGING_DIR = "staging"
ENTRY_SUFFIX = ".meta"
# The entry's own layout; a change to it needs a new magic, as the header follows it.
MAGIC = b"lazybuild erofs image cache 1\n"
_DIGEST_SIZE = 32
_HEADER_LENGTH = struct.Struct("<I")
_TOC_DIGEST = re.compile(r"sha256:([0-9a-f]{64})")
_ENTRY_NAME = re.compile(r"[0-9a-f]{64}" + re.escape(ENTRY_SUFFIX))
# What decides the image of a TOC: the TOC's decoding, the index made of it, the writer.
_WRITER_MODULES: tuple[ModuleType, ...] = (
    lazybuild.estargz.toc,
    lazybuild.estargz.index,
    lazybuild.erofs.tree,
    lazybuild.erofs.ondisk,
    lazybuild.erofs.layout,
    lazybuild.erofs.extents,
    lazybuild.erofs.stored,
)


def layout_for(state_dir: Path, index: LayerIndex, toc_digest: str | None) -> ErofsLayout:
    """``build_layout(index, toc_digest)``, from the state directory's entry for the TOC
    when it has a sound one, else built and kept there. ``index`` must be the verified
    view of the TOC ``toc_digest`` names. Blocking: call it in a worker thread. Raises
    what ``build_layout`` raises (``UnrepresentableError``); a state directory that
    cannot keep the entry only costs the next open a build."""
    path = entry_path(state_dir, toc_digest) if toc_digest else None
    writer = writer_fingerprint()
    if path is None or writer is None or toc_digest is None:
        return build_layout(index, toc_digest)
    restored = _load(path, index, toc_digest, writer)
    if restored is not None:
        return restored
    built = build_layout(index, toc_digest)
    parts = layout_parts(built, index)
    if parts is not None:
        _store(state_dir, path, encode_entry(parts, toc_digest, writer))
    return built


def entry_path(state_dir: Path, toc_digest: str) -> Path | None:
    """Where the entry for ``toc_digest`` lives; None for a digest that is not SHA-256
    (no entry is kept for it)."""
    match = _TOC_DIGEST.fullmatch(toc_digest)
    if match is None:
        return None
    return state_dir / IMAGE_CACHE_DIR / f"{match.group(1)}{ENTRY_SUFFIX}"


@functools.cache
def writer_fingerprint() -> str | None:
    """SHA-256 of the source of the modules that make an image of a TOC; None when it
    cannot be read (then nothing is kept)."""
    digest = hashlib.sha256()
    for module in _WRITER_MODULES:
        if module.__file__ is None:
            return None
        try:
            digest.update(Path(module.__file__).read_bytes())
        except OSError:
            return None
    return digest.hexdigest()


def encode_entry(parts: LayoutParts, toc_digest: str, writer: str) -> bytes:
    """An entry's bytes: magic, SHA-256 of the rest, header length, JSON header,
    metadata."""
    header = {
        "toc_digest": toc_digest,
        "writer": writer,
        "data_start": parts.data_start,
        "stats": dataclasses.asdict(parts.stats),
        "files": parts.files,
    }
    encoded = json.dumps(header, separators=(",", ":")).encode("ascii")
    body = _HEADER_LENGTH.pack(len(encoded)) + encoded + parts.metadata
    return MAGIC + hashlib.sha256(body).digest() + body


def decode_entry(data: bytes, toc_digest: str, writer: str) -> LayoutParts:
    """The parts an entry holds, if it is whole and was written for ``toc_digest`` by
    ``writer``; else ``StoredLayoutError`` saying why not."""
    start = len(MAGIC) + _DIGEST_SIZE
    if len(data) < start or not data.startswith(MAGIC):
        raise StoredLayoutError("not an entry of this format")
    body = memoryview(data)[start:]
    if hashlib.sha256(body).digest() != data[len(MAGIC) : start]:
        raise StoredLayoutError("damaged (its digest does not match)")
    try:
        (length,) = _HEADER_LENGTH.unpack_from(body)
        header_end = _HEADER_LENGTH.size + length
        header: dict[str, Any] = json.loads(bytes(body[_HEADER_LENGTH.size : header_end]))
        if header["writer"] != writer:
            raise StoredLayoutError("written by other code")
        if header["toc_digest"] != toc_digest:
            raise StoredLayoutError(f"of TOC {header['toc_digest']!r}")
        return LayoutParts(
            metadata=bytes(body[header_end:]),
            data_start=int(header["data_start"]),
            stats=LayoutStats(**header["stats"]),
            files=tuple((str(path), int(size)) for path, size in header["files"]),
        )
    except (struct.error, ValueError, TypeError, KeyError) as exc:
        raise StoredLayoutError(f"unreadable header: {exc}") from None


def usage(state_dir: Path) -> CacheUsage:
    """The entries kept, and the disk space they and unfinished writes take."""
    root = state_dir / IMAGE_CACHE_DIR
    entries = _entries(root)
    return CacheUsage(len(entries), sum(allocated_bytes(p) for p in [*entries, *_staged(root)]))


def remove_all(state_dir: Path) -> CacheUsage:
    """Remove every entry, and what dead processes left in staging; returns what was
    freed. Safe while layers are served: a filesystem process never reads an entry
    again once it has the layout."""
    root = state_dir / IMAGE_CACHE_DIR
    removed = freed = 0
    for path in _entries(root):
        size = allocated_bytes(path)
        try:
            path.unlink()
        except FileNotFoundError:
            continue  # another prune was first
        removed += 1
        freed += size
    for path in _staged(root):
        if not owner_alive(path.name):
            size = allocated_bytes(path)
            path.unlink(missing_ok=True)
            freed += size
    return CacheUsage(removed, freed)


def _load(path: Path, index: LayerIndex, toc_digest: str, writer: str) -> ErofsLayout | None:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        log.info("EROFS image of TOC %s: cannot read %s (%s); building it", toc_digest, path, exc)
        return None
    try:
        restored = restore_layout(index, toc_digest, decode_entry(data, toc_digest, writer))
    except StoredLayoutError as exc:
        log.info("EROFS image of TOC %s: the kept one is %s; building it", toc_digest, exc)
        return None
    log.debug("EROFS image of TOC %s restored from %s", toc_digest, path)
    return restored


def _store(state_dir: Path, path: Path, data: bytes) -> None:
    staging = state_dir / IMAGE_CACHE_DIR / STAGING_DIR
    try:
        write_atomic(path, data, staging_dir=staging)
    except OSError as exc:
        # A full or read-only state directory, or a prune that took the directory
        # away mid-write: the layout is built, only the next open pays again.
        log.warning("EROFS image not kept at %s: %s", path, exc)
    try:
        for leftover in _staged(state_dir / IMAGE_CACHE_DIR):
            if not owner_alive(leftover.name):
                leftover.unlink(missing_ok=True)
    except OSError as exc:
        log.warning("EROFS image cache: cannot clear %s: %s", staging, exc)


def _entries(root: Path) -> list[Path]:
    try:
        return [p for p in root.iterdir() if _ENTRY_NAME.fullmatch(p.name)]
    except FileNotFoundError:
        return []


def _staged(root: Path) -> list[Path]:
    try:
        return list((root / STAGING_DIR).iterdir())
    except FileNotFoundError:
        return []


def allocated_bytes(path: Path) -> int:
    """The disk space a file takes (0 once it is gone)."""
    try:
        return path.lstat().st_blocks * 512
    except FileNotFoundError:
        return 0
