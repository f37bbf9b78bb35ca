"""Reading the input tar for the writer: index entries, collapse duplicates, reorder.

The writer needs the whole entry list before writing (a later duplicate replaces
an earlier entry, and prioritized files move to the front), so the input must be
seekable: a real file is indexed in place, anything else is spooled to a temp file.
"""

from __future__ import annotations

import os
import shutil
import tarfile
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import BinaryIO

from lazybuild.errors import FormatError, UsageError
from lazybuild.estargz.index import clean_name
from lazybuild.estargz.toc import NO_PREFETCH_LANDMARK, PREFETCH_LANDMARK, TOC_TAR_NAME
from lazybuild.untar.tarheader import TarFormatError
from lazybuild.untar.tarreader import TarReader

_RESERVED_NAMES = frozenset({TOC_TAR_NAME, PREFETCH_LANDMARK, NO_PREFETCH_LANDMARK})
_SPOOL_BLOCK = 1 << 20
_SUPPORTED_TYPES = frozenset(
    {
        tarfile.REGTYPE,
        tarfile.AREGTYPE,
        tarfile.CONTTYPE,
        tarfile.LNKTYPE,
        tarfile.SYMTYPE,
        tarfile.DIRTYPE,
        tarfile.CHRTYPE,
        tarfile.BLKTYPE,
        tarfile.FIFOTYPE,
    }
)


@dataclass(frozen=True)
class InputEntry:
    """A tar member of the input; its payload is ``source[payload_offset:+info.size]``."""

    key: str  # cleaned name, the identity used for duplicates and prioritisation
    info: tarfile.TarInfo
    payload_offset: int


class PayloadSource:
    """Positional reads from the (seekable) input tar."""

    def __init__(self, file: BinaryIO) -> None:
        self._file = file
        try:
            self._fd: int | None = file.fileno()
        except (OSError, AttributeError):
            self._fd = None

    def read(self, offset: int, length: int, what: str) -> bytes:
        if self._fd is not None:
            data = os.pread(self._fd, length, offset)
        else:
            self._file.seek(offset)
            data = self._file.read(length)
        if len(data) != length:
            raise FormatError(f"input tar: payload of {what!r} is truncated")
        return data


def _is_seekable_file(file: BinaryIO) -> bool:
    try:
        return file.seekable()
    except (OSError, AttributeError, ValueError):
        return False


@contextmanager
def seekable_input(tar_in: BinaryIO) -> Iterator[BinaryIO]:
    """``tar_in`` itself if it can seek, otherwise a temp-file copy of it."""
    if _is_seekable_file(tar_in):
        yield tar_in
        return
    with tempfile.TemporaryFile(prefix="lazybuild-estargz-") as spool:
        shutil.copyfileobj(tar_in, spool, _SPOOL_BLOCK)
        spool.seek(0)
        yield spool


def read_entries(source: BinaryIO) -> list[InputEntry]:
    """The input's entries in tar order; later duplicates replace earlier ones in place of
    the later one; existing landmarks and TOC entries are dropped."""
    entries: dict[str, InputEntry] = {}
    _check_bounded(source)
    try:
        with tarfile.open(
            fileobj=source, mode="r:", encoding="utf-8", errors="surrogateescape"
        ) as archive:
            for info in archive:
                if info.type not in _SUPPORTED_TYPES or info.issparse():
                    raise FormatError(
                        f"input tar: unsupported entry type {info.type!r} for {info.name!r}"
                    )
                key = clean_name(info.name)
                if key in _RESERVED_NAMES:
                    continue
                entries.pop(key, None)  # dict order then puts the replacement at its own spot
                # tarfile's offsets are positions in ``source`` (not relative to where it started)
                entries[key] = InputEntry(key, info, info.offset_data)
    except tarfile.TarError as error:
        raise FormatError(f"input tar: {error}") from None
    return list(entries.values())


def _check_bounded(source: BinaryIO) -> None:
    """Walk the input with lazybuild's bounded tar reader before ``tarfile`` indexes it.

    ``tarfile`` reads extension headers of any declared size into memory and loops on
    some malformed headers; layers come from registries. What the bounded reader accepts
    (headers, extension sizes, sizes and offsets that are never negative) ``tarfile``
    indexes in bounded time and memory.
    """
    start = source.tell()
    try:
        for _ in TarReader(source):
            pass
    except TarFormatError as error:
        raise FormatError(f"input tar: {error}") from None
    source.seek(start)


def prioritize(
    entries: list[InputEntry], prioritized: Sequence[str], *, allow_missing: bool
) -> tuple[list[InputEntry], list[InputEntry], list[str]]:
    """Split entries into (prioritized with their parents and hardlink targets, rest, missing).

    Mirrors the reference ``sortEntries``: for each path in the given order, its
    parent directories (root first) that exist as entries, then for a hardlink its
    target, then the entry itself; nothing moves twice. Unlike the reference, a
    parent that is not in the tar is skipped instead of failing the whole path.
    """
    by_key = {e.key: e for e in entries}
    moved: dict[str, InputEntry] = {}
    missing: list[str] = []

    def move(key: str, depth: int = 0) -> None:
        if key in moved:
            return
        entry = by_key[key]
        if entry.info.islnk() and depth < 64:
            target = clean_name(entry.info.linkname)
            if target in by_key:
                move_with_parents(target, depth + 1)
        moved[key] = entry

    def move_with_parents(key: str, depth: int = 0) -> None:
        parts = key.split("/") if key else []
        for i in range(len(parts)):
            ancestor = "/".join(parts[:i])
            if ancestor in by_key and ancestor not in moved:
                moved[ancestor] = by_key[ancestor]
        move(key, depth)

    for path in prioritized:
        key = clean_name(path)
        if key not in by_key:
            if not allow_missing:
                raise UsageError(f"prioritized file {path!r} is not in the input tar")
            missing.append(path)
            continue
        move_with_parents(key)
    rest = [e for e in entries if e.key not in moved]
    return list(moved.values()), rest, missing


def tar_name(info: tarfile.TarInfo) -> str:
    """The name as the re-encoded header carries it (tarfile strips, and re-adds, a dir's "/")."""
    if info.isdir() and not info.name.endswith("/"):
        return info.name + "/"
    return info.name
