"""Directories under an extraction root, reached without ever leaving it.

Every path an extractor touches is walked here one component at a time, each opened
with ``O_PATH | O_NOFOLLOW`` relative to the directory handle before it. The kernel
is never handed a ``..`` or a multi-component path, so whatever the tree holds by
then (symlinks an archive planted, directories it replaced), no step can land outside
the root: ``..`` pops our own stack of handles and stops at the root, and a symlink
is either refused or read with ``readlinkat`` and walked the same way, an absolute
target counting from the root (what ``openat2``'s ``RESOLVE_IN_ROOT`` does, on every
kernel). Operations then act on ``(directory handle, name)`` pairs or on a handle.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Callable, Sequence
from pathlib import Path

# Linux gives up after 40 links in one lookup; an archive's cycle must not hang us.
MAX_SYMLINKS = 40
_PATH_FLAGS = os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC

# Called with (directory handle, name) to create a missing directory on the way.
MakeDirectory = Callable[[int, str], None]


class RootDir:
    """An open handle on the root; close it (or use ``with``) when done."""

    def __init__(self, path: Path, *, follow_symlinks: bool) -> None:
        self.fd = os.open(path, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        self.follow_symlinks = follow_symlinks

    def __enter__(self) -> RootDir:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def open_directory(self, parts: Sequence[str], make: MakeDirectory | None = None) -> int:
        """A new ``O_PATH`` handle on the directory ``parts`` names under the root.

        Symlinks on the way are followed inside the root when the root allows it, else
        refused (``ELOOP``). Missing directories are made with ``make`` when given, else
        ``FileNotFoundError``. Anything else on the way is ``NotADirectoryError``.
        """
        stack: list[int] = []  # handles below the root, ours to close
        pending = list(parts)
        links = 0
        try:
            while pending:
                part = pending.pop(0)
                if part in ("", "."):
                    continue
                if part == "..":
                    if stack:
                        os.close(stack.pop())
                    continue
                current = stack[-1] if stack else self.fd
                fd = _open_component(current, part, make)
                mode = os.fstat(fd).st_mode
                if stat.S_ISDIR(mode):
                    stack.append(fd)
                    continue
                os.close(fd)
                if not stat.S_ISLNK(mode):
                    raise NotADirectoryError(errno.ENOTDIR, "not a directory", part)
                if not self.follow_symlinks:
                    raise OSError(
                        errno.ELOOP, "a symbolic link where a directory is expected", part
                    )
                links += 1
                if links > MAX_SYMLINKS:
                    raise OSError(errno.ELOOP, "too many levels of symbolic links", part)
                target = os.readlink(part, dir_fd=current)
                if target.startswith("/"):
                    while stack:
                        os.close(stack.pop())
                pending[:0] = target.split("/")
            return stack.pop() if stack else os.dup(self.fd)
        finally:
            for fd in stack:
                os.close(fd)


def _open_component(directory: int, name: str, make: MakeDirectory | None) -> int:
    try:
        return os.open(name, _PATH_FLAGS, dir_fd=directory)
    except FileNotFoundError:
        if make is None:
            raise
    make(directory, name)
    return os.open(name, _PATH_FLAGS, dir_fd=directory)


def proc_path(fd: int, name: str | None = None) -> str:
    """A path naming what ``fd`` is (or ``name`` in it) for calls that take no handle:
    the kernel resolves ``/proc/self/fd/N`` to the handle's own inode, not by name."""
    return f"/proc/self/fd/{fd}" if name is None else f"/proc/self/fd/{fd}/{name}"
