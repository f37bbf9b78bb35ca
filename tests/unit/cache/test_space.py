"""Telling a write that failed for lack of space in the state dir from other failures."""

from __future__ import annotations

import errno
import sqlite3
from pathlib import Path

from lazybuild.cache.space import StateDirFullError, is_no_space, names_a_file
from lazybuild.solver.cachestore import CacheStoreFullError


def no_space(filename: str | None = None) -> OSError:
    return OSError(errno.ENOSPC, "No space left on device", filename)


def test_no_space_is_found_inside_groups_and_causes(tmp_path: Path) -> None:
    inside = ExceptionGroup("steps", [ValueError("x"), no_space(str(tmp_path / "a"))])
    assert is_no_space(inside)
    assert is_no_space(inside, within=tmp_path)
    assert not is_no_space(inside, within=tmp_path / "elsewhere")
    wrapped = RuntimeError("wrapped")
    wrapped.__cause__ = no_space()
    assert is_no_space(wrapped) and not names_a_file(wrapped)
    assert not is_no_space(OSError(errno.EIO, "I/O error"))
    assert is_no_space(CacheStoreFullError("full"), within=tmp_path)
    full = sqlite3.OperationalError("database or disk is full")
    full.sqlite_errorcode = sqlite3.SQLITE_FULL
    assert is_no_space(full)


def test_the_message_names_the_state_dir_and_what_was_done(tmp_path: Path) -> None:
    assert str(StateDirFullError(tmp_path, "exporting the image")) == (
        f"no space left in the state directory {tmp_path} while exporting the image"
    )
    assert "(or the output's destination)" in str(
        StateDirFullError(tmp_path, "exporting", "the output's destination")
    )
