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

import os
import stat
from pathlib import Path

from lazybuild.errors import FormatError, LazybuildError
from lazybuild.untar.compression import decompressed, starts_with_tar_header
from lazybuild.untar.extract import DamagedArchiveError, Owner, archive_policy, extract

__all__ = ["ArchiveError", "extract_tar", "is_tar_archive"]


class ArchiveError(LazybuildError):
    """An archive that cannot be extracted safely or at all."""


def _open(path: Path) -> int:
    return os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)


def is_tar_archive(path: Path) -> bool:
    """True when ``path`` is a regular file holding a (possibly compressed) tar.

    As Go's ``tar.Reader.Next`` does for BuildKit, the first 512 bytes must be a header
    with a valid checksum: a text file named ``x.tar`` is not an archive, and neither is
    gzip of something other than a tar.
    """
    try:
        if not stat.S_ISREG(os.lstat(path).st_mode):
            return False
        with os.fdopen(_open(path), "rb") as raw, decompressed(raw) as stream:
            return starts_with_tar_header(stream)
    except OSError:
        return False


def extract_tar(archive: Path, dest: Path, *, owner: Owner | None) -> None:
    """Extract ``archive`` (see :func:`is_tar_archive`) into the existing directory ``dest``.

    ``owner`` (uid, gid), when given, owns every entry instead of the archive's owners.
    """
    try:
        with os.fdopen(_open(archive), "rb") as raw, decompressed(raw) as stream:
            extract(stream, dest, archive_policy(owner), "archive")
    except DamagedArchiveError as error:
        raise ArchiveError(f"archive is damaged: {error.reason}") from None
    except FormatError as error:
        raise ArchiveError(str(error)) from None
