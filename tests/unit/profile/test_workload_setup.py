"""What `record_workload` refuses before anything runs."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio

from lazybuild.profile.workload import ProfileError, _filesystem_type, record_workload

CONFIG = {"config": {"Cmd": ["/bin/true"]}}


def test_the_root_filesystem_must_be_a_mount(tmp_path: Path) -> None:
    with pytest.raises(ProfileError, match="not a mount point"):
        trio.run(lambda: record_workload(tmp_path, CONFIG, scratch_dir=tmp_path / "s"))


def test_the_root_filesystem_must_be_an_overlay() -> None:
    # / is a mount point, but not an overlay of its own (a filesystem mark on it would
    # see the whole host).
    root = Path("/")
    if _filesystem_type(root) == "overlay":
        pytest.skip("this test runs on an overlay root")
    with pytest.raises(ProfileError, match="not an overlay"):
        trio.run(lambda: record_workload(root, CONFIG, scratch_dir=Path("/nonexistent")))


def test_the_timeout_must_be_positive(tmp_path: Path) -> None:
    with pytest.raises(ProfileError, match="positive"):
        trio.run(lambda: record_workload(tmp_path, CONFIG, timeout=0, scratch_dir=tmp_path / "s"))
