"""Mount layer directories as one tree with overlayfs, and take such mounts down.

Lower directories are given top-most first, the order overlayfs itself uses in
`lowerdir=`. Without an upper directory the result is read-only.
"""

from __future__ import annotations

import contextlib
import errno
import os
from collections.abc import Iterator, Sequence
from pathlib import Path

from lazybuild.errors import LazybuildError
from lazybuild.snapshot import syscalls
from lazybuild.snapshot.mountinfo import is_mounted

__all__ = ["MountError", "is_mounted", "mount_overlay", "unmount"]

# The kernel copies at most one page of mount data and rejects longer option strings.
_MOUNT_DATA_LIMIT = os.sysconf("SC_PAGE_SIZE") - 1


class MountError(LazybuildError):
    """The kernel refused to mount or unmount; the message names the target and why."""


def mount_overlay(
    target: Path,
    lowers: Sequence[Path],
    upper: Path | None = None,
    work: Path | None = None,
) -> None:
    """Mount `lowers` (top-most first), plus `upper`/`work` if writable, at `target`."""
    if not lowers:
        raise MountError(f"cannot mount {target}: no lower directories")
    if (upper is None) != (work is None):
        raise MountError(f"cannot mount {target}: upper and work directories go together")
    if upper is None and len(lowers) == 1:
        # overlayfs needs two lowers when there is no upper; one layer is just a view.
        _bind_read_only(lowers[0], target)
        return
    flags = syscalls.MS_RDONLY if upper is None else 0
    with _short_paths_if_needed([*lowers, *([upper, work] if upper and work else [])]) as paths:
        lower_paths, rest = paths[: len(lowers)], paths[len(lowers) :]
        options = ["lowerdir=" + ":".join(lower_paths)]
        if rest:
            options += [f"upperdir={rest[0]}", f"workdir={rest[1]}"]
        _mount(target, "overlay", "overlay", flags, ",".join(options))


def unmount(target: Path, *, lazy: bool = False) -> None:
    """Unmount `target`; `lazy` detaches it now even if it is busy (MNT_DETACH)."""
    try:
        syscalls.umount(target, syscalls.MNT_DETACH if lazy else 0)
    except OSError as exc:
        reason = "not a mount point" if exc.errno == errno.EINVAL else exc.strerror
        raise MountError(f"cannot unmount {target}: {reason}") from None


def _bind_read_only(source: Path, target: Path) -> None:
    _mount(target, str(source), None, syscalls.MS_BIND, None)
    try:
        # A bind mount ignores MS_RDONLY on creation; only a remount makes it read-only.
        _mount(
            target, "none", None, syscalls.MS_BIND | syscalls.MS_REMOUNT | syscalls.MS_RDONLY, None
        )
    except MountError:
        unmount(target, lazy=True)
        raise


def _mount(target: Path, source: str, fstype: str | None, flags: int, data: str | None) -> None:
    try:
        syscalls.mount(source, target, fstype, flags, data)
    except OSError as exc:
        raise MountError(f"cannot mount {fstype or 'bind'} at {target}: {exc.strerror}") from None


def _escape(path: Path) -> str:
    # overlayfs splits lowerdir on ':' and options on ','; a backslash escapes both.
    text = os.fspath(path)
    for special in ("\\", ":", ","):
        text = text.replace(special, "\\" + special)
    return text


@contextlib.contextmanager
def _short_paths_if_needed(paths: Sequence[Path]) -> Iterator[list[str]]:
    """The paths as overlayfs options, shortened when together they pass one page.

    The short form is /proc/self/fd/N of an O_PATH descriptor: the kernel resolves it
    to the directory at mount time, and unlike chdir() it is safe with threads.
    """
    escaped = [_escape(path) for path in paths]
    if sum(len(text) + len("upperdir=,") for text in escaped) <= _MOUNT_DATA_LIMIT:
        yield escaped
        return
    descriptors: list[int] = []
    try:
        for path in paths:
            descriptors.append(os.open(path, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC))
        yield [f"/proc/self/fd/{fd}" for fd in descriptors]
    except FileNotFoundError as exc:
        raise MountError(f"cannot mount overlay: {exc.filename} does not exist") from None
    finally:
        for fd in descriptors:
            os.close(fd)
