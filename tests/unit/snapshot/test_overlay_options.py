"""overlay mount arguments: checked before the kernel is asked, and escaped."""

from __future__ import annotations

from pathlib import Path

import pytest

from lazybuild.snapshot import overlay
from lazybuild.snapshot.overlay import MountError, mount_overlay


def test_needs_a_lower(tmp_path: Path) -> None:
    with pytest.raises(MountError, match="no lower"):
        mount_overlay(tmp_path, [])


def test_upper_and_work_go_together(tmp_path: Path) -> None:
    with pytest.raises(MountError, match="together"):
        mount_overlay(tmp_path, [tmp_path], upper=tmp_path)


def test_separators_escaped() -> None:
    assert overlay._escape(Path("/a:b,c\\d")) == "/a\\:b\\,c\\\\d"


def test_short_paths_only_when_too_long(tmp_path: Path) -> None:
    with overlay._short_paths_if_needed([tmp_path]) as paths:
        assert paths == [str(tmp_path)]
    deep = tmp_path / ("x" * 200)
    deep.mkdir()
    with overlay._short_paths_if_needed([deep] * 40) as paths:
        assert all(p.startswith("/proc/self/fd/") for p in paths)
        assert Path(paths[0]).resolve() == deep


def test_short_paths_missing_dir_is_mount_error(tmp_path: Path) -> None:
    with (
        pytest.raises(MountError, match="does not exist"),
        overlay._short_paths_if_needed([tmp_path / ("y" * 250)] * 40),
    ):
        pass
