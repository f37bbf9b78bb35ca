"""Reading /proc/self/mountinfo."""

from __future__ import annotations

from pathlib import Path

import pytest

from lazybuild.snapshot import mountinfo

SAMPLE = """\
22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw
30 22 0:26 / /proc rw - proc proc rw
40 22 0:40 / /tmp/with\\040space rw - tmpfs tmpfs rw
41 22 0:41 / /tmp/b rw - overlay overlay rw,lowerdir=/a
42 41 0:42 / /tmp/b/rootfs rw - overlay overlay rw,lowerdir=/a
"""


@pytest.fixture
def fake_mountinfo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "mountinfo"
    path.write_text(SAMPLE)
    real_open = open

    def fake_open(file: object, *args: object, **kwargs: object) -> object:
        if file == "/proc/self/mountinfo":
            file = path
        return real_open(file, *args, **kwargs)  # type: ignore[call-overload]

    monkeypatch.setattr("builtins.open", fake_open)


def test_octal_escapes_decoded(fake_mountinfo: None) -> None:
    assert Path("/tmp/with space") in mountinfo.mount_points()


def test_mounts_under_deepest_first(fake_mountinfo: None) -> None:
    assert mountinfo.mounts_under(Path("/tmp/b")) == [Path("/tmp/b/rootfs"), Path("/tmp/b")]
    assert mountinfo.mounts_under(Path("/tmp/bb")) == []


def test_real_mountinfo_has_root(tmp_path: Path) -> None:
    assert mountinfo.is_mounted(Path("/"))
    assert mountinfo.is_mounted(Path("/proc"))
    assert not mountinfo.is_mounted(tmp_path)
