"""Container paths resolve inside the rootfs, symlinks and all."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from lazybuild.executor.errors import ContainerError
from lazybuild.executor.rootpath import ensure_working_dir, resolve_in_root


def test_absolute_symlink_stays_in_root(tmp_path: Path) -> None:
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to("/real")
    assert resolve_in_root(tmp_path, "/link/file") == tmp_path / "real" / "file"


def test_dotdot_stops_at_root(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "up").symlink_to("../../../../etc")
    assert resolve_in_root(tmp_path, "/a/up/passwd") == tmp_path / "etc" / "passwd"
    assert resolve_in_root(tmp_path, "/../../x") == tmp_path / "x"


def test_symlink_loop_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "loop").symlink_to("loop")
    with pytest.raises(ContainerError, match="symbolic links"):
        resolve_in_root(tmp_path, "/loop")


def test_working_dir_created_root_owned_0755(tmp_path: Path) -> None:
    old_umask = os.umask(0o077)
    try:
        ensure_working_dir(tmp_path, "/srv/app/src")
    finally:
        os.umask(old_umask)
    for path in (tmp_path / "srv", tmp_path / "srv/app", tmp_path / "srv/app/src"):
        assert path.is_dir()
        assert path.stat().st_mode & 0o777 == 0o755


def test_working_dir_through_symlink(tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    (tmp_path / "var").symlink_to("/data")
    ensure_working_dir(tmp_path, "/var/work")
    assert (tmp_path / "data" / "work").is_dir()


def test_working_dir_that_is_a_file_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    with pytest.raises(ContainerError, match="/file"):
        ensure_working_dir(tmp_path, "/file")
    with pytest.raises(ContainerError, match="cannot be created"):
        ensure_working_dir(tmp_path, "/file/sub")
