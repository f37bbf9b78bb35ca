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
import tarfile
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from lazybuild.errors import LazybuildError, UsageError

__all__ = ["RootfsTarError", "TarStats", "write_rootfs_tar", "write_rootfs_tar_to"]

_SKIPPED_XATTR_PREFIXES = ("trusted.overlay.",)
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
    links: dict[tuple[int, int], str] = {}
    with tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT) as archive:
        # Depth first in name order, as a walk of the tree lists it (a directory's
        # entries right after it).
        stack: list[tuple[Path, str, Iterator[str]]] = [(root, "", iter(sorted(_list(root))))]
        while stack:
            directory, prefix, entries = stack[-1]
            entry = next(entries, None)
            if entry is None:
                stack.pop()
                continue
            path, name = directory / entry, f"{prefix}{entry}"
            try:
                is_dir = _add(archive, path, name, links, stats)
            except OSError as error:
                raise RootfsTarError(
                    f"cannot add {path} to the tar: {error.strerror or error}"
                ) from None
            if is_dir:
                stack.append((path, f"{name}/", iter(sorted(_list(path)))))
    return stats


def _add(
    archive: tarfile.TarFile,
    path: Path,
    name: str,
    links: dict[tuple[int, int], str],
    stats: TarStats,
) -> bool:
    info = os.lstat(path)
    mode = info.st_mode
    if stat.S_ISSOCK(mode):
        return False
    member = tarfile.TarInfo(name)
    member.mode = stat.S_IMODE(mode)
    member.uid, member.gid = info.st_uid, info.st_gid
    member.uname = member.gname = ""
    member.mtime = info.st_mtime
    xattrs = _xattrs(path)
    if xattrs:
        member.pax_headers = {f"SCHILY.xattr.{key}": value for key, value in xattrs.items()}
    key = (info.st_dev, info.st_ino)
    if stat.S_ISREG(mode) and info.st_nlink > 1 and key in links:
        member.type, member.linkname = tarfile.LNKTYPE, links[key]
        archive.addfile(member)
        stats.entries += 1
        return False
    if stat.S_ISDIR(mode):
        member.type, member.name = tarfile.DIRTYPE, f"{name}/"
        archive.addfile(member)
    elif stat.S_ISLNK(mode):
        member.type, member.linkname = tarfile.SYMTYPE, os.readlink(path)
        archive.addfile(member)
    elif stat.S_ISREG(mode):
        if info.st_nlink > 1:
            links[key] = name
        member.size = info.st_size
        with open(path, "rb", opener=_nofollow) as data:
            archive.addfile(member, data)
        stats.bytes += info.st_size
    elif stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        member.type = tarfile.CHRTYPE if stat.S_ISCHR(mode) else tarfile.BLKTYPE
        member.devmajor, member.devminor = os.major(info.st_rdev), os.minor(info.st_rdev)
        archive.addfile(member)
    elif stat.S_ISFIFO(mode):
        member.type = tarfile.FIFOTYPE
        archive.addfile(member)
    else:
        return False
    stats.entries += 1
    return stat.S_ISDIR(mode)


def _nofollow(path: str, flags: int) -> int:
    return os.open(path, flags | os.O_NOFOLLOW)


def _list(directory: Path) -> list[str]:
    try:
        return os.listdir(directory)
    except OSError as error:
        raise RootfsTarError(f"cannot list {directory}: {error.strerror or error}") from None


def _xattrs(path: Path) -> dict[str, str]:
    try:
        names = os.listxattr(path, follow_symlinks=False)
    except OSError:
        return {}
    values: dict[str, str] = {}
    for key in sorted(names):
        if key.startswith(_SKIPPED_XATTR_PREFIXES):
            continue
        try:
            raw = os.getxattr(path, key, follow_symlinks=False)
        except OSError:
            continue
        # tarfile encodes PAX values as UTF-8; surrogateescape keeps binary values whole.
        values[key] = raw.decode("utf-8", "surrogateescape")
    return values
