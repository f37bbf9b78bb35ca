"""Reading a solved result's files for a frontend, never leaving the result's root.

The result is mounted (read-only) at a directory; every path a frontend names is walked
from a handle on that root (``untar.rootdir``), so a symlink in the result (``/etc/x ->
/etc/shadow``, ``a -> ../../..``) resolves inside it, as it would in a container. ``..``
is taken lexically from the root: it can never climb above it. Blocking; run in a thread.
"""

from __future__ import annotations

import errno
import os
import posixpath
import stat
from pathlib import Path

from lazybuild.gateway.contract import MAX_DIR_ENTRIES, MAX_READ_BYTES, DirEntry, GatewayError
from lazybuild.untar.rootdir import MAX_SYMLINKS, RootDir

__all__ = ["list_directory", "read_bytes"]


def _parts(path: str) -> list[str]:
    return [part for part in posixpath.normpath("/" + path).split("/") if part]


def _parent_and_name(root: RootDir, path: str) -> tuple[int, str | None]:
    """An ``O_PATH`` handle on the directory holding ``path``'s last component and that
    component (None: ``path`` is the root), with a symlink as last component followed."""
    parts = _parts(path)
    for _ in range(MAX_SYMLINKS + 1):
        if not parts:
            return os.dup(root.fd), None
        parent = root.open_directory(parts[:-1])
        name = parts[-1]
        try:
            info = os.lstat(name, dir_fd=parent)
        except FileNotFoundError:
            return parent, name
        except BaseException:
            os.close(parent)
            raise
        if not stat.S_ISLNK(info.st_mode):
            return parent, name
        target = os.readlink(name, dir_fd=parent)
        os.close(parent)
        base = "" if target.startswith("/") else "/".join(parts[:-1])
        parts = _parts(posixpath.join("/", base, target))
    raise OSError(errno.ELOOP, "too many levels of symbolic links", path)


def read_bytes(root_path: Path, path: str, offset: int, length: int | None) -> bytes:
    """Up to ``length`` bytes (None: to the end) of the file at ``path`` from ``offset``."""
    if offset < 0 or (length is not None and length < 0):
        raise GatewayError(f"read_file {path}: offset and length must not be negative")
    try:
        with RootDir(root_path, follow_symlinks=True) as root:
            parent, name = _parent_and_name(root, path)
            try:
                if name is None:
                    raise IsADirectoryError(errno.EISDIR, "is a directory")
                fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=parent)
            finally:
                os.close(parent)
            try:
                info = os.fstat(fd)
                if not stat.S_ISREG(info.st_mode):
                    raise OSError(errno.EINVAL, "not a regular file")
                wanted = max(info.st_size - offset, 0) if length is None else length
                if wanted > MAX_READ_BYTES:
                    raise GatewayError(
                        f"read_file {path}: {wanted} bytes asked, over the limit of "
                        f"{MAX_READ_BYTES}; read it in parts (offset, length)"
                    )
                return os.pread(fd, wanted, offset)
            finally:
                os.close(fd)
    except OSError as error:
        raise GatewayError(f"read_file {path}: {error.strerror or error}") from None


def list_directory(root_path: Path, path: str) -> list[DirEntry]:
    """The entries of the directory at ``path``, sorted by name."""
    try:
        with RootDir(root_path, follow_symlinks=True) as root:
            handle = root.open_directory(_parts(path))
            try:
                fd = os.open(".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=handle)
            finally:
                os.close(handle)
            try:
                return _entries(fd, path)
            finally:
                os.close(fd)
    except OSError as error:
        raise GatewayError(f"read_dir {path}: {error.strerror or error}") from None


def _entries(fd: int, path: str) -> list[DirEntry]:
    entries: list[DirEntry] = []
    for name in os.listdir(fd):
        if len(entries) == MAX_DIR_ENTRIES:
            raise GatewayError(f"read_dir {path}: more than {MAX_DIR_ENTRIES} entries")
        info = os.lstat(name, dir_fd=fd)
        mode = info.st_mode
        if stat.S_ISREG(mode):
            entries.append(DirEntry(name, "file", stat.S_IMODE(mode), info.st_size))
        elif stat.S_ISDIR(mode):
            entries.append(DirEntry(name, "dir", stat.S_IMODE(mode)))
        elif stat.S_ISLNK(mode):
            link = os.readlink(name, dir_fd=fd)
            entries.append(DirEntry(name, "symlink", stat.S_IMODE(mode), linkname=link))
        else:
            entries.append(DirEntry(name, "other", stat.S_IMODE(mode)))
    return sorted(entries, key=lambda entry: entry.name)
