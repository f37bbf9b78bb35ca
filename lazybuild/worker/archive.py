"""ADD's local archives: recognising a tar and extracting it, as Docker and BuildKit do.

A source file is an archive when, after optional gzip, bzip2, xz or zstd decompression
(recognised by magic bytes, never by the file name), it starts with a valid tar header;
anything else is copied as a plain file by the caller.

Extraction is :mod:`lazybuild.untar`'s, with the archive policy: into an existing
directory, the *extraction root*, and never outside it, as Docker's chrooted untar:
names are cleaned, a name that climbs above the root with ``..`` is refused, and
symlinks met on the way (including ones the archive itself just made) resolve inside
the extraction root, an absolute target counting from it. The last path component is
never followed (a directory entry excepted, which may land in an existing symlinked
directory), so an entry replaces whatever symlink or file was there.

Entries keep the archive's modes, mtimes, xattrs (``SCHILY.xattr.*``) and numeric owners,
unless an owner is given (``ADD --chown``), which then applies to every entry. Parent
directories the archive does not list are created 0755. Whiteout files (``.wh.*``) are
ordinary files here: an archive is content, not a layer. Blocking code: run it in a
thread.
"""

from __future__ import annotations

import bz2
import contextlib
import gzip
import lzma
import os
import stat
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO, cast

import zstandard

from lazybuild.errors import FormatError, LazybuildError
from lazybuild.untar.extract import Owner, archive_policy, extract
from lazybuild.untar.tarheader import BLOCK, parse_header

__all__ = ["ArchiveError", "extract_tar", "is_tar_archive"]

_GZIP_MAGIC = b"\x1f\x8b\x08"
_BZIP2_MAGIC = b"BZh"
_XZ_MAGIC = b"\xfd7zXZ\x00"
_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
_MAGIC_LENGTH = 6

# What decompression raises on data that only looked like its format.
_DECODE_ERRORS = (OSError, EOFError, zlib.error, lzma.LZMAError, zstandard.ZstdError)


class ArchiveError(LazybuildError):
    """An archive that cannot be extracted safely or at all."""


# -- recognising -------------------------------------------------------------------------


@contextlib.contextmanager
def _decompressed(path: Path) -> Iterator[BinaryIO]:
    """``path``'s bytes, decompressed when they start with a known compression magic."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    with os.fdopen(fd, "rb") as raw:
        head = raw.read(_MAGIC_LENGTH)
        raw.seek(0)
        stream = _decompressor(raw, head)
        if stream is None:
            yield raw
            return
        with stream:
            yield stream


def _decompressor(raw: BinaryIO, head: bytes) -> BinaryIO | None:
    """A reader decompressing ``raw`` by the magic ``head`` starts with; None if none."""
    stream: object
    if head.startswith(_GZIP_MAGIC):
        stream = gzip.GzipFile(fileobj=raw, mode="rb")
    elif head.startswith(_BZIP2_MAGIC):
        stream = bz2.BZ2File(raw, mode="rb")
    elif head.startswith(_XZ_MAGIC):
        stream = lzma.LZMAFile(raw, mode="rb")  # noqa: SIM115 (the caller closes it)
    elif head.startswith(_ZSTD_MAGIC):
        stream = zstandard.ZstdDecompressor().stream_reader(raw, read_across_frames=True)
    else:
        return None
    # Each is a readable, closable binary stream: all that sniffing and tarfile's "r|" need.
    return cast(BinaryIO, stream)


def _read_block(stream: BinaryIO) -> bytes:
    block = b""
    while len(block) < BLOCK:
        more = stream.read(BLOCK - len(block))
        if not more:
            break
        block += more
    return block


def is_tar_archive(path: Path) -> bool:
    """True when ``path`` is a regular file holding a (possibly compressed) tar.

    As Go's ``tar.Reader.Next`` does for BuildKit, the first 512 bytes must be a header
    with a valid checksum: a text file named ``x.tar`` is not an archive, and neither is
    gzip of something other than a tar.
    """
    try:
        if not stat.S_ISREG(os.lstat(path).st_mode):
            return False
        with _decompressed(path) as stream:
            block = _read_block(stream)
        parse_header(block)
    except (*_DECODE_ERRORS, FormatError):
        return False
    return True


# -- extracting --------------------------------------------------------------------------


def extract_tar(archive: Path, dest: Path, *, owner: Owner | None) -> None:
    """Extract ``archive`` (see :func:`is_tar_archive`) into the existing directory ``dest``.

    ``owner`` (uid, gid), when given, owns every entry instead of the archive's owners.
    """
    try:
        with _decompressed(archive) as stream:
            extract(stream, dest, archive_policy(owner), "archive")
    except FormatError as error:
        raise ArchiveError(str(error)) from None
    except _DECODE_ERRORS as error:
        if isinstance(error, OSError) and error.errno is not None:
            raise  # the host's trouble (a full disk), reported as it is
        raise ArchiveError(f"archive is damaged: {error}") from None
