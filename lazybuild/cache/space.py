"""Telling a full state directory from other failures, and saying so in one line.

A write into the state directory that fails for lack of space (``ENOSPC``, ``EDQUOT``,
SQLite's ``SQLITE_FULL``) is reported as ``no space left in the state directory
<path> while <doing what>`` rather than as whichever write happened to fail first.
A RUN step's process that fails while the filesystem under its upper directory is
full is taken to have failed for that reason (its own last lines are shown too).
"""

from __future__ import annotations

import errno
import os
import sqlite3
from collections.abc import Iterator
from pathlib import Path

from lazybuild.errors import LazybuildError

__all__ = [
    "NO_SPACE_ERRNOS",
    "StateDirFullError",
    "filesystem_full",
    "is_no_space",
    "names_a_file",
]

NO_SPACE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})
# Less free than this (or no free inode) counts as full: a process that died of a
# full disk leaves a few blocks at most (reserved ones, a short last write).
_FULL_SLACK_BYTES = 1 << 20


class StateDirFullError(LazybuildError):
    """``or_at``: where else the write may have failed, when the error named no file
    and the state dir has room again by the time we look (its temp files removed)."""

    def __init__(self, state_dir: Path, doing: str, or_at: str | None = None) -> None:
        where = f"{state_dir} (or {or_at})" if or_at else f"{state_dir}"
        super().__init__(f"no space left in the state directory {where} while {doing}")
        self.state_dir = state_dir
        self.doing = doing


def filesystem_full(path: Path) -> bool:
    """Whether the filesystem holding ``path`` has (next to) no room left."""
    try:
        stats = os.statvfs(path)
    except OSError:
        return False
    no_inodes = stats.f_files > 0 and stats.f_favail == 0
    return no_inodes or stats.f_bavail * stats.f_frsize < _FULL_SLACK_BYTES


def _within(error: BaseException) -> Iterator[BaseException]:
    """``error`` and every error inside it: a group's members, causes, contexts, and the
    ``cause`` some of the project's errors keep; each once."""
    seen: set[int] = set()
    pending = [error]
    while pending:
        current = pending.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        if isinstance(current, BaseExceptionGroup):
            pending.extend(current.exceptions)
        for inner in (current.__cause__, current.__context__, getattr(current, "cause", None)):
            if isinstance(inner, BaseException):
                pending.append(inner)


def names_a_file(error: BaseException) -> bool:
    """Whether an OSError in ``error`` (a group, a cause) names the file it failed on."""
    return any(isinstance(e, OSError) and e.filename is not None for e in _within(error))


def is_no_space(error: BaseException, within: Path | None = None) -> bool:
    """Whether ``error`` (or one inside it: a group, a cause) is a failed write for lack
    of space; with ``within``, one in that directory (an OSError naming a file
    elsewhere is not; one naming none counts when ``within``'s filesystem is full)."""
    for current in _within(error):
        if getattr(current, "no_space", False) is True:
            return True  # our own verdict (a step's process, the build cache)
        if (
            isinstance(current, OSError)
            and current.errno in NO_SPACE_ERRNOS
            and (within is None or _about(current, within))
        ):
            return True
        if isinstance(current, sqlite3.Error) and (
            getattr(current, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL
        ):
            return True
    return False


def _about(error: OSError, directory: Path) -> bool:
    names = [name for name in (error.filename, error.filename2) if name is not None]
    if not names:
        return filesystem_full(directory)
    root = os.path.abspath(directory)
    for name in names:
        path = os.path.abspath(os.fsdecode(name))
        if path == root or path.startswith(root + os.sep):
            return True
    return False
