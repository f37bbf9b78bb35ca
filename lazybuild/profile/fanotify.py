"""fanotify(7) through ctypes: which files of one filesystem are opened or read, in order.

A container started by runc sees its root filesystem through a copy of the mount
(runc unshares the mount namespace and pivots into it), so a mount mark
(``FAN_MARK_MOUNT``) on the host's overlay sees none of the container's accesses. A
filesystem mark (``FAN_MARK_FILESYSTEM``, Linux 4.20) is on the superblock instead,
which every copy of the mount shares: an overlay mounted for one container has a
superblock of its own, so marking it sees exactly that container's file accesses,
whichever layer (lazily served FUSE directory, local directory) holds the file.

Each event carries a file descriptor the kernel opened for us; its path is read back
through ``/proc/self/fd`` and the descriptor closed. For a file the container opened
through its own (unreachable from here) mount, that path is relative to the
container's root, e.g. ``/usr/bin/python3.11``; an access through the host's mount
shows the host path, ``<rootfs>/usr/bin/python3.11``.
"""

from __future__ import annotations

import ctypes
import errno
import os
import struct
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import trio

from lazybuild.errors import LazybuildError

# <linux/fanotify.h>
FAN_CLOEXEC = 0x00000001
FAN_NONBLOCK = 0x00000002
FAN_CLASS_NOTIF = 0x00000000
FAN_UNLIMITED_QUEUE = 0x00000010
FAN_MARK_ADD = 0x00000001
FAN_MARK_MOUNT = 0x00000010
FAN_MARK_FILESYSTEM = 0x00000100
FAN_ACCESS = 0x00000001
FAN_OPEN = 0x00000020
FAN_OPEN_EXEC = 0x00001000
FAN_Q_OVERFLOW = 0x00004000
FANOTIFY_METADATA_VERSION = 3
AT_FDCWD = -100

# struct fanotify_event_metadata: event_len, vers, reserved, metadata_len, mask, fd, pid
_METADATA = struct.Struct("=IBBHQii")
_READ_SIZE = 64 * 1024
DELETED_SUFFIX = " (deleted)"

DEFAULT_MASK = FAN_OPEN | FAN_ACCESS | FAN_OPEN_EXEC
MarkScope = Literal["filesystem", "mount"]


class FanotifyError(LazybuildError):
    """fanotify is unavailable or refused the mark (it needs CAP_SYS_ADMIN)."""


@dataclass(frozen=True)
class FileEvent:
    path: str  # the kernel's name for the file (readlink of the event's descriptor)
    mask: int
    pid: int


class _Libc:
    def __init__(self) -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        try:
            self.init = libc.fanotify_init
            self.mark = libc.fanotify_mark
        except AttributeError:
            raise FanotifyError("this C library has no fanotify_init/fanotify_mark") from None
        self.init.argtypes = [ctypes.c_uint, ctypes.c_uint]
        self.init.restype = ctypes.c_int
        self.mark.argtypes = [
            ctypes.c_int,
            ctypes.c_uint,
            ctypes.c_uint64,
            ctypes.c_int,
            ctypes.c_char_p,
        ]
        self.mark.restype = ctypes.c_int


_libc: _Libc | None = None


def _functions() -> _Libc:
    global _libc  # noqa: PLW0603 - loaded once, on first use
    if _libc is None:
        _libc = _Libc()
    return _libc


def _failure(what: str, path: Path) -> FanotifyError:
    code = ctypes.get_errno()
    reason = os.strerror(code)
    if code in (errno.EPERM, errno.EACCES):
        reason += " (recording file accesses needs root: CAP_SYS_ADMIN)"
    elif code == errno.ENOSYS:
        reason += " (the kernel has no fanotify)"
    return FanotifyError(f"cannot watch file accesses on {path}: {what}: {reason}")


class FilesystemWatch:
    """One fanotify group with one mark on the filesystem (or mount) that holds ``path``.

    Blocking-free: the group is non-blocking, ``read_events`` returns what is queued
    and ``batches`` waits for more through trio. The queue is unlimited, so no event
    is lost while the reader is busy (``overflowed`` says if the kernel lost any anyway).
    """

    def __init__(
        self, path: Path, *, mask: int = DEFAULT_MASK, scope: MarkScope = "filesystem"
    ) -> None:
        functions = _functions()
        flags = FAN_CLASS_NOTIF | FAN_CLOEXEC | FAN_NONBLOCK | FAN_UNLIMITED_QUEUE
        fd: int = functions.init(flags, os.O_RDONLY | os.O_LARGEFILE)
        if fd < 0:
            raise _failure("fanotify_init", path)
        self._fd = fd
        self.path = path
        self.overflowed = False
        self.events_read = 0
        where = FAN_MARK_FILESYSTEM if scope == "filesystem" else FAN_MARK_MOUNT
        mark_flags = FAN_MARK_ADD | where
        if functions.mark(fd, mark_flags, mask, AT_FDCWD, os.fsencode(path)) != 0:
            error = _failure("fanotify_mark", path)
            os.close(fd)
            self._fd = -1
            raise error

    def fileno(self) -> int:
        return self._fd

    @property
    def closed(self) -> bool:
        return self._fd < 0

    def close(self) -> None:
        """Stop watching; the kernel drops the mark with the group."""
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> FilesystemWatch:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def read_events(self) -> list[FileEvent]:
        """Every event queued now, oldest first (empty when none is)."""
        events: list[FileEvent] = []
        while self._fd >= 0:
            try:
                data = os.read(self._fd, _READ_SIZE)
            except BlockingIOError:
                break
            except InterruptedError:
                continue
            if not data:
                break
            events.extend(self._parse(data))
        self.events_read += len(events)
        return events

    async def batches(self) -> AsyncIterator[list[FileEvent]]:
        """Batches of events as they arrive, until cancelled or closed."""
        while self._fd >= 0:
            await trio.lowlevel.wait_readable(self._fd)
            batch = self.read_events()
            if batch:
                yield batch

    def _parse(self, data: bytes) -> list[FileEvent]:
        events: list[FileEvent] = []
        offset = 0
        while offset + _METADATA.size <= len(data):
            length, version, _, _, mask, fd, pid = _METADATA.unpack_from(data, offset)
            if version != FANOTIFY_METADATA_VERSION:
                if fd >= 0:
                    os.close(fd)
                raise FanotifyError(
                    f"fanotify metadata version {version}, expected {FANOTIFY_METADATA_VERSION}"
                )
            if length < _METADATA.size:
                raise FanotifyError(f"fanotify event of {length} bytes is too short")
            offset += length
            if mask & FAN_Q_OVERFLOW:
                self.overflowed = True
            if fd < 0:
                continue
            try:
                path = os.readlink(f"/proc/self/fd/{fd}")
            except OSError:
                continue
            finally:
                os.close(fd)
            events.append(FileEvent(path, mask, pid))
        return events


def container_path(kernel_path: str, host_root: str) -> str | None:
    """``kernel_path`` (as an event names it) relative to the container's root, or None
    when it is not a file the container reached through its own root.

    Paths under ``host_root`` were opened through the host's mount: by lazybuild itself
    or by runc while it set the container up (before ``pivot_root``), not by the
    workload. A file deleted since it was opened is still named (`` (deleted)`` is cut).
    """
    path = kernel_path.removesuffix(DELETED_SUFFIX)
    if not path.startswith("/"):
        return None  # pipes, sockets, anonymous inodes
    root = host_root.rstrip("/")
    if root and (path == root or path.startswith(root + "/")):
        return None
    relative = os.path.normpath(path).lstrip("/")
    return relative or None


class AccessLog:
    """Files in the order of their first access, each once, relative to the root."""

    def __init__(self, host_root: Path) -> None:
        self._host_root = os.path.realpath(host_root)
        self._seen: dict[str, None] = {}
        self.ignored = 0  # events on paths outside the container's view

    def add(self, events: list[FileEvent]) -> None:
        for event in events:
            relative = container_path(event.path, self._host_root)
            if relative is None:
                self.ignored += 1
            elif relative not in self._seen:
                self._seen[relative] = None

    @property
    def files(self) -> tuple[str, ...]:
        return tuple(self._seen)
