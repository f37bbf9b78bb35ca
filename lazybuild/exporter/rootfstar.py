"""``type=tar`` (and ``-o -``): the root filesystem as one POSIX tar, as BuildKit's tar
exporter writes it: names relative to the root without a ``./`` prefix, directories
with a trailing ``/``, numeric owners without names, symlinks never followed, hardlinks
as links to the first name, devices and fifos kept, sockets left out. Entries come in
sorted order and xattrs (overlayfs's own excepted) go in PAX ``SCHILY.xattr`` records,
so the same tree gives the same bytes.
"""

from __future__ import annotations

import os
import stat
import sys
import tempfile
from pathlib import Path
from typing import BinaryIO

from lazybuild.errors import LazybuildError, UsageError
from lazybuild.untar.writer import TarWriter, depth_first, read_xattrs, stat_header

__all__ = ["RootfsTarError", "TarStats", "write_rootfs_tar", "write_rootfs_tar_to"]

STDOUT = "-"


class RootfsTarError(LazybuildError):
    """A file of the root filesystem could not be read into the tar."""


class TarStats:
    def __init__(self) -> None:
        self.entries = 0
        self.bytes = 0


def write_rootfs_tar_to(root: Path, dest: str) -> TarStats:
    """The tar of ``root`` at ``dest`` (appearing only once complete), or on stdout."""
    if dest == STDOUT:
        stdout = sys.stdout.buffer
        if stdout.isatty():
            # buildx's words: a tar on a terminal is never what was meant.
            raise UsageError(
                "dest file is required for the tar exporter: refusing to write to a "
                "terminal; redirect stdout or give dest="
            )
        stats = write_rootfs_tar(root, stdout)
        stdout.flush()
        return stats
    path = Path(dest)
    if path.is_dir():
        raise UsageError(f"output destination {path} is a directory, not a file")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".partial")
    staged = Path(name)
    try:
        with os.fdopen(fd, "wb") as out:
            stats = write_rootfs_tar(root, out)
        staged.chmod(0o644)
        staged.rename(path)
    except BaseException:
        staged.unlink(missing_ok=True)
        raise
    return stats


def write_rootfs_tar(root: Path, out: BinaryIO) -> TarStats:
    stats = TarStats()
    # Depth first in name order, as a walk of the tree lists it (a directory's entries
    # right after it).
    with TarWriter(out) as archive:

        def visit(item: tuple[Path, str]) -> list[tuple[Path, str]] | None:
            path, name = item
            try:
                is_dir = _add(archive, path, name, stats)
            except OSError as error:
                raise RootfsTarError(
                    f"cannot add {path} to the tar: {error.strerror or error}"
                ) from None
            return _entries(path, f"{name}/") if is_dir else None

        depth_first(_entries(root, ""), visit)
    return stats


def _entries(directory: Path, prefix: str) -> list[tuple[Path, str]]:
    return [(directory / entry, f"{prefix}{entry}") for entry in sorted(_list(directory))]


def _add(archive: TarWriter, path: Path, name: str, stats: TarStats) -> bool:
    info = os.lstat(path)
    mode = info.st_mode
    linkname = os.readlink(path) if stat.S_ISLNK(mode) else ""
    xattrs = read_xattrs(path, skip_unreadable=True)
    member = stat_header(name, info, mtime=info.st_mtime, linkname=linkname, xattrs=xattrs)
    if member is None:  # a socket
        return False
    if archive.link_to_earlier(member, info):
        stats.entries += 1
        return False
    if stat.S_ISREG(mode):
        with open(path, "rb", opener=_nofollow) as data:
            archive.add(member, data)
        stats.bytes += info.st_size
    else:
        archive.add(member)
    stats.entries += 1
    return stat.S_ISDIR(mode)


def _nofollow(path: str, flags: int) -> int:
    return os.open(path, flags | os.O_NOFOLLOW)


def _list(directory: Path) -> list[str]:
    try:
        return os.listdir(directory)
    except OSError as error:
        raise RootfsTarError(f"cannot list {directory}: {error.strerror or error}") from None
