"""``type=local``: a root filesystem copied into a directory, file for file.

Everything a layer can carry is kept: modes (set after owners, since chown clears
setuid bits and file capabilities), numeric owners, xattrs, mtimes and atimes
(directories' mode and times last, after their children are written), symlinks
(never followed), hardlinks (names sharing an inode in the source share one in the
copy), device nodes and fifos. Sockets are
skipped, as in layers. What is already in ``dest`` stays unless a copied name replaces
it. Owners and ``trusted.*``/``security.*`` xattrs need root; without it they are left
out and counted rather than failing the export.
"""

from __future__ import annotations

import errno
import os
import shutil
import stat
from dataclasses import dataclass, field
from pathlib import Path

from lazybuild.errors import LazybuildError

__all__ = ["CopyStats", "RootfsCopyError", "copy_rootfs"]

# overlayfs's own bookkeeping never belongs to the files themselves.
_SKIPPED_XATTR_PREFIXES = ("trusted.overlay.",)


class RootfsCopyError(LazybuildError):
    """A file of the root filesystem could not be read or written to the destination."""


@dataclass
class CopyStats:
    entries: int = 0
    bytes: int = 0
    skipped_sockets: int = 0
    # Owners and xattrs the destination refused (not root, or no xattr support).
    unset_owners: int = 0
    unset_xattrs: int = 0
    hardlinks: int = 0
    _first_names: dict[tuple[int, int], Path] = field(default_factory=dict, repr=False)


def copy_rootfs(source: Path, dest: Path) -> CopyStats:
    """Copy the tree under ``source`` into ``dest`` (created if missing)."""
    dest.mkdir(parents=True, exist_ok=True)
    stats = CopyStats()
    # Directories get their times last: writing their children changes them.
    directory_times: list[tuple[Path, os.stat_result]] = []
    stack: list[tuple[Path, Path]] = [(source, dest)]
    while stack:
        source_dir, dest_dir = stack.pop()
        for name in sorted(_list(source_dir)):
            source_path, dest_path = source_dir / name, dest_dir / name
            info = _lstat(source_path)
            if stat.S_ISSOCK(info.st_mode):
                stats.skipped_sockets += 1
                continue
            try:
                _copy_entry(source_path, dest_path, info, stats)
            except OSError as error:
                raise RootfsCopyError(
                    f"cannot copy {source_path} to {dest_path}: {error.strerror or error}"
                ) from None
            stats.entries += 1
            if stat.S_ISDIR(info.st_mode):
                directory_times.append((dest_path, info))
                stack.append((source_path, dest_path))
    for path, info in reversed(directory_times):
        os.chmod(path, stat.S_IMODE(info.st_mode))
        os.utime(path, ns=(info.st_atime_ns, info.st_mtime_ns), follow_symlinks=False)
    return stats


def _copy_entry(source: Path, dest: Path, info: os.stat_result, stats: CopyStats) -> None:
    mode = info.st_mode
    if stat.S_ISDIR(mode):
        _clear_unless_directory(dest)
        dest.mkdir(exist_ok=True)
    else:
        _clear(dest)
        if stat.S_ISREG(mode) and info.st_nlink > 1:
            first = stats._first_names.get((info.st_dev, info.st_ino))
            if first is not None:
                os.link(first, dest)
                stats.hardlinks += 1
                return
            stats._first_names[(info.st_dev, info.st_ino)] = dest
        if stat.S_ISREG(mode):
            shutil.copyfile(source, dest, follow_symlinks=False)
            stats.bytes += info.st_size
        elif stat.S_ISLNK(mode):
            os.symlink(os.readlink(source), dest)
        elif stat.S_ISFIFO(mode):
            os.mkfifo(dest)
        elif stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
            os.mknod(dest, stat.S_IFMT(mode) | 0o600, info.st_rdev)
        else:
            raise RootfsCopyError(f"cannot copy {source}: unsupported file type")
    _copy_metadata(source, dest, info, stats)


def _copy_metadata(source: Path, dest: Path, info: os.stat_result, stats: CopyStats) -> None:
    try:
        os.lchown(dest, info.st_uid, info.st_gid)
    except PermissionError:
        stats.unset_owners += 1
    _copy_xattrs(source, dest, stats)
    if stat.S_ISDIR(info.st_mode):
        return  # mode and times once its children are in (a read-only dir stays writable)
    if not stat.S_ISLNK(info.st_mode):  # Linux has no lchmod; a symlink's mode is fixed
        os.chmod(dest, stat.S_IMODE(info.st_mode))
    os.utime(dest, ns=(info.st_atime_ns, info.st_mtime_ns), follow_symlinks=False)


def _copy_xattrs(source: Path, dest: Path, stats: CopyStats) -> None:
    try:
        names = os.listxattr(source, follow_symlinks=False)
    except OSError as error:
        if error.errno in (errno.ENOTSUP, errno.EOPNOTSUPP):
            return
        raise
    for name in names:
        if name.startswith(_SKIPPED_XATTR_PREFIXES):
            continue
        value = os.getxattr(source, name, follow_symlinks=False)
        try:
            os.setxattr(dest, name, value, follow_symlinks=False)
        except OSError as error:
            if error.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP):
                raise
            stats.unset_xattrs += 1


def _clear(path: Path) -> None:
    """Make room for a new entry at ``path``."""
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return
    if stat.S_ISDIR(info.st_mode):
        shutil.rmtree(path)
    else:
        os.unlink(path)


def _clear_unless_directory(path: Path) -> None:
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISDIR(info.st_mode):
        os.unlink(path)


def _list(directory: Path) -> list[str]:
    try:
        return os.listdir(directory)
    except OSError as error:
        raise RootfsCopyError(f"cannot list {directory}: {error.strerror}") from None


def _lstat(path: Path) -> os.stat_result:
    try:
        return os.lstat(path)
    except OSError as error:
        raise RootfsCopyError(f"cannot read {path}: {error.strerror}") from None
