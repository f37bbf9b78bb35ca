"""overlayfs mounts over a real Debian root filesystem (needs root)."""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from lazybuild.snapshot import MountError, is_mounted, mount_overlay, unmount
from lazybuild.snapshot.mountinfo import mounts_under

pytestmark = pytest.mark.root


@pytest.fixture
def scratch(tmp_path: Path) -> Iterator[Path]:
    """tmp_path, with every mount left under it taken down even if the test failed."""
    if os.geteuid() != 0:
        pytest.skip("mounting needs root")
    try:
        yield tmp_path
    finally:
        for point in mounts_under(tmp_path):
            unmount(point, lazy=True)


@pytest.fixture
def upper_layer(scratch: Path) -> Path:
    """A small layer over Debian: a new file, a whiteout and an opaque directory."""
    layer = scratch / "layer"
    (layer / "etc").mkdir(parents=True)
    (layer / "added.txt").write_text("from the upper layer\n")
    # overlayfs whiteout: a 0/0 character device hides /etc/hostname below.
    os.mknod(layer / "etc" / "hostname", stat.S_IFCHR | 0o000, os.makedev(0, 0))
    opaque = layer / "usr" / "share" / "doc"
    opaque.mkdir(parents=True)
    (opaque / "only-me.txt").write_text("the lower doc files are hidden\n")
    os.setxattr(opaque, "trusted.overlay.opaque", b"y")
    return layer


def test_two_lowers_merge_read_only(scratch: Path, debian_rootfs: Path, upper_layer: Path) -> None:
    target = scratch / "merged"
    target.mkdir()
    mount_overlay(target, [upper_layer, debian_rootfs])
    try:
        assert is_mounted(target)
        assert (target / "added.txt").read_text() == "from the upper layer\n"
        assert (target / "bin" / "sh").exists()  # from the lower layer
        assert (debian_rootfs / "etc" / "hostname").exists()
        assert not (target / "etc" / "hostname").exists()  # whited out
        assert (target / "etc" / "passwd").exists()  # /etc itself is merged
        assert os.listdir(target / "usr" / "share" / "doc") == ["only-me.txt"]
        with pytest.raises(OSError, match="Read-only"):
            (target / "new").write_text("x")
    finally:
        unmount(target)
    assert not is_mounted(target)


def test_writable_overlay_writes_to_upper_only(
    scratch: Path, debian_rootfs: Path, upper_layer: Path
) -> None:
    target, upper, work = scratch / "merged", scratch / "upper", scratch / "work"
    for directory in (target, upper, work):
        directory.mkdir()
    mount_overlay(target, [upper_layer, debian_rootfs], upper=upper, work=work)
    try:
        (target / "etc" / "written").write_text("x")
        (target / "added.txt").unlink()
    finally:
        unmount(target)
    assert (upper / "etc" / "written").read_text() == "x"
    assert stat.S_ISCHR((upper / "added.txt").lstat().st_mode)  # a whiteout in upper
    assert (upper_layer / "added.txt").exists()
    assert not (debian_rootfs / "etc" / "written").exists()


def test_single_lower_is_a_read_only_view(scratch: Path, debian_rootfs: Path) -> None:
    target = scratch / "view"
    target.mkdir()
    mount_overlay(target, [debian_rootfs])
    try:
        assert (target / "bin" / "sh").exists()
        with pytest.raises(OSError, match="Read-only"):
            (target / "tmp" / "x").write_text("x")
    finally:
        unmount(target)
    assert not is_mounted(target)


def test_lowerdir_longer_than_a_page(scratch: Path) -> None:
    lowers = []
    for index in range(60):  # 60 x ~120 characters: about twice the page size
        lower = scratch / ("layer-" + "x" * 100 + f"-{index:02d}")
        lower.mkdir()
        (lower / f"file{index:02d}").write_text(str(index))
        (lower / "shadowed").write_text(str(index))
        lowers.append(lower)
    target = scratch / "merged"
    target.mkdir()
    mount_overlay(target, lowers)
    try:
        assert len(os.listdir(target)) == 61
        assert (target / "shadowed").read_text() == "0"  # the first lower is on top
    finally:
        unmount(target)


def test_errors_name_target_and_reason(scratch: Path, debian_rootfs: Path) -> None:
    missing = scratch / "missing"
    with pytest.raises(MountError, match=re.escape(f"{missing}: No such file or directory")):
        mount_overlay(missing, [debian_rootfs, debian_rootfs])
    with pytest.raises(MountError, match=re.escape(f"cannot unmount {scratch}: not a mount point")):
        unmount(scratch)


def test_lazy_unmount_of_busy_mount(scratch: Path, debian_rootfs: Path) -> None:
    target = scratch / "busy"
    target.mkdir()
    mount_overlay(target, [debian_rootfs])
    fd = os.open(target / "etc", os.O_RDONLY)
    try:
        with pytest.raises(MountError, match="busy"):
            unmount(target)
        unmount(target, lazy=True)
        assert not is_mounted(target)
    finally:
        os.close(fd)
