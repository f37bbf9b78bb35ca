"""A real overlay upper directory written as a layer tar (needs root)."""

from __future__ import annotations

import dataclasses
import io
import os
import shutil
import stat
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from lazybuild.errors import LazybuildError
from lazybuild.estargz.writer import WriterOptions, write_estargz
from lazybuild.snapshot import mount_overlay, unmount
from lazybuild.snapshot.diff import write_upper_as_tar
from lazybuild.snapshot.mountinfo import mounts_under
from tests.support.trees import Facts, Tree, directory_tree, estargz_tree, flatten, tar_tree

pytestmark = pytest.mark.root

EPOCH = 1_000_000_000


@pytest.fixture
def scratch(tmp_path: Path) -> Iterator[Path]:
    if os.geteuid() != 0:
        pytest.skip("mounting needs root")
    try:
        yield tmp_path
    finally:
        for point in mounts_under(tmp_path):
            unmount(point, lazy=True)


def _make_lower(lower: Path) -> None:
    for directory in ["dir", "deldir/sub", "replace/sub"]:
        (lower / directory).mkdir(parents=True)
    for name in [
        "keep.txt",
        "modify.txt",
        "chmod.txt",
        "chown.txt",
        "delete.txt",
        "deldir/a",
        "deldir/sub/b",
        "replace/old",
        "replace/sub/old2",
        "dir/inside",
    ]:
        (lower / name).write_text(f"lower {name}\n")


@dataclasses.dataclass
class Changed:
    upper: Path
    lower: Path
    merged: Tree


@pytest.fixture
def changed(scratch: Path) -> Changed:
    """A lower directory, changed through an overlay mount; the merged view's facts are
    captured before unmounting."""
    lower, upper, work, merged = (scratch / n for n in ("lower", "upper", "work", "merged"))
    for directory in (lower, upper, work, merged):
        directory.mkdir()
    old_umask = os.umask(0o022)  # the modes below are checked exactly
    try:
        _make_lower(lower)
        mount_overlay(merged, [lower], upper, work)
    except BaseException:
        os.umask(old_umask)
        raise
    try:
        (merged / "new.txt").write_text("new\n")
        with open(merged / "modify.txt", "a") as stream:
            stream.write("more\n")
        os.chmod(merged / "chmod.txt", 0o600)
        os.chown(merged / "chown.txt", 1234, 5678)
        os.remove(merged / "delete.txt")
        shutil.rmtree(merged / "deldir")
        shutil.rmtree(merged / "replace")
        (merged / "replace").mkdir()
        (merged / "replace" / "fresh").write_text("fresh\n")
        os.symlink("keep.txt", merged / "link")
        os.symlink("../../../../etc/passwd", merged / "dir" / "escape")
        os.link(merged / "new.txt", merged / "hard.txt")
        os.link(merged / "keep.txt", merged / "keep-link.txt")  # copies keep.txt up
        os.rename(merged / "dir" / "inside", merged / "dir" / "moved")
        os.setxattr(merged / "new.txt", "user.x", b"value")
        os.setxattr(merged / "dir", "user.x", b"dir value")
        os.mkfifo(merged / "dir" / "fifo")
        os.mknod(merged / "dir" / "null", stat.S_IFCHR | 0o666, os.makedev(1, 3))
        os.chmod(merged / "dir" / "null", 0o666)
        os.sync()
        merged_tree = directory_tree(merged)
    finally:
        os.umask(old_umask)
        unmount(merged)
    return Changed(upper, lower, merged_tree)


def _tar_bytes(upper: Path, epoch: int | None = None) -> bytes:
    out = io.BytesIO()
    write_upper_as_tar(upper, out, source_date_epoch=epoch)
    return out.getvalue()


def _summary(member: tarfile.TarInfo) -> tuple[object, ...]:
    kind = {
        tarfile.REGTYPE: "reg",
        tarfile.DIRTYPE: "dir",
        tarfile.SYMTYPE: "sym",
        tarfile.LNKTYPE: "link",
        tarfile.CHRTYPE: "char",
        tarfile.FIFOTYPE: "fifo",
    }[member.type]
    xattrs = {k: v for k, v in member.pax_headers.items() if k.startswith("SCHILY.xattr.")}
    extra: object = member.linkname or (
        (member.devmajor, member.devminor) if member.ischr() else ""
    )
    return (member.name, kind, oct(member.mode), member.uid, member.gid, member.size, extra, xattrs)


def test_entries_exactly(changed: Changed) -> None:
    data = _tar_bytes(changed.upper, EPOCH)
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tar:
        members = tar.getmembers()
    x = {"SCHILY.xattr.user.x": "value"}
    assert [_summary(m) for m in members] == [
        (".wh.deldir", "reg", "0o0", 0, 0, 0, "", {}),
        (".wh.delete.txt", "reg", "0o0", 0, 0, 0, "", {}),
        ("chmod.txt", "reg", "0o600", 0, 0, 16, "", {}),
        ("chown.txt", "reg", "0o644", 1234, 5678, 16, "", {}),
        ("dir", "dir", "0o755", 0, 0, 0, "", {"SCHILY.xattr.user.x": "dir value"}),
        ("dir/.wh.inside", "reg", "0o0", 0, 0, 0, "", {}),
        ("dir/escape", "sym", "0o777", 0, 0, 0, "../../../../etc/passwd", {}),
        ("dir/fifo", "fifo", "0o644", 0, 0, 0, "", {}),
        ("dir/moved", "reg", "0o644", 0, 0, 17, "", {}),
        ("dir/null", "char", "0o666", 0, 0, 0, (1, 3), {}),
        ("hard.txt", "reg", "0o644", 0, 0, 4, "", x),
        ("keep-link.txt", "reg", "0o644", 0, 0, 15, "", {}),
        ("keep.txt", "link", "0o644", 0, 0, 0, "keep-link.txt", {}),
        ("link", "sym", "0o777", 0, 0, 0, "keep.txt", {}),
        ("modify.txt", "reg", "0o644", 0, 0, 22, "", {}),
        ("new.txt", "link", "0o644", 0, 0, 0, "hard.txt", {}),
        ("replace", "dir", "0o755", 0, 0, 0, "", {}),
        ("replace/.wh..wh..opq", "reg", "0o0", 0, 0, 0, "", {}),
        ("replace/fresh", "reg", "0o644", 0, 0, 6, "", {}),
    ]
    assert all(m.mtime <= EPOCH for m in members)
    assert all(m.uname == "" and m.gname == "" for m in members)
    # overlayfs's own xattrs (opaque, origin, impure) never reach the layer.
    assert not any(
        k.startswith("SCHILY.xattr.trusted.overlay.") for m in members for k in m.pax_headers
    )


def _without_dir_mtimes(entries: dict[str, Facts]) -> dict[str, Facts]:
    return {
        path: dataclasses.replace(facts, mtime=0) if facts.type == "dir" else facts
        for path, facts in entries.items()
    }


def test_layer_over_lower_equals_merged_view(changed: Changed) -> None:
    layer = tar_tree(io.BytesIO(_tar_bytes(changed.upper)))
    applied = flatten([directory_tree(changed.lower), layer])
    assert _without_dir_mtimes(applied) == _without_dir_mtimes(changed.merged.entries)
    assert (
        layer.hardlinks
        == changed.merged.hardlinks
        == {frozenset({"new.txt", "hard.txt"}), frozenset({"keep.txt", "keep-link.txt"})}
    )


def test_deterministic(changed: Changed) -> None:
    assert _tar_bytes(changed.upper, EPOCH) == _tar_bytes(changed.upper, EPOCH)
    assert _tar_bytes(changed.upper) == _tar_bytes(changed.upper)


def test_estargz_round_trip(changed: Changed) -> None:
    data = _tar_bytes(changed.upper, EPOCH)
    blob = io.BytesIO()
    write_estargz(io.BytesIO(data), blob, WriterOptions(chunk_size=4096, workers=2))
    assert estargz_tree(blob.getvalue()) == tar_tree(io.BytesIO(data))


def _set(path: Path, xattrs: dict[str, bytes]) -> None:
    for key, value in xattrs.items():
        os.setxattr(path, key, value, follow_symlinks=False)


def test_overlay_notation_by_hand(scratch: Path) -> None:
    """Each overlayfs form, written directly into an upper directory."""
    upper = scratch / "upper"
    (upper / "opaque" / "sub").mkdir(parents=True)
    (upper / "merged-dir").mkdir()
    os.mknod(upper / "gone", stat.S_IFCHR | 0o644, os.makedev(0, 0))
    os.chown(upper / "gone", 1000, 1000)
    (upper / "xwhiteout").write_bytes(b"")
    (upper / "kept").write_bytes(b"k")
    os.mknod(upper / "disk", stat.S_IFBLK | 0o660, os.makedev(8, 1))
    for path, mode in [
        (upper / "disk", 0o660),
        (upper / "kept", 0o644),
        (upper / "opaque", 0o755),
        (upper / "opaque" / "sub", 0o755),
        (upper / "merged-dir", 0o755),
    ]:
        os.chmod(path, mode)
    _set(upper / "opaque", {"trusted.overlay.opaque": b"y", "trusted.other": b"t"})
    _set(upper / "merged-dir", {"trusted.overlay.opaque": b"x", "trusted.overlay.impure": b"y"})
    _set(upper / "xwhiteout", {"trusted.overlay.whiteout": b""})
    _set(upper / "kept", {"trusted.overlay.origin": b"\x00\xfb", "user.y": b"c"})
    for path in [upper / "gone", upper / "opaque"]:
        os.utime(path, (5_000, 5_000), follow_symlinks=False)
    data = _tar_bytes(upper, 4_000)
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tar:
        members = tar.getmembers()
    assert [(m.name, m.type, m.mode, m.uid, m.gid, m.size) for m in members] == [
        (".wh.gone", tarfile.REGTYPE, 0, 0, 0, 0),
        (".wh.xwhiteout", tarfile.REGTYPE, 0, 0, 0, 0),
        ("disk", tarfile.BLKTYPE, 0o660, 0, 0, 0),
        ("kept", tarfile.REGTYPE, 0o644, 0, 0, 1),
        ("merged-dir", tarfile.DIRTYPE, 0o755, 0, 0, 0),
        ("opaque", tarfile.DIRTYPE, 0o755, 0, 0, 0),
        ("opaque/.wh..wh..opq", tarfile.REGTYPE, 0, 0, 0, 0),
        ("opaque/sub", tarfile.DIRTYPE, 0o755, 0, 0, 0),
    ]
    by_name = {m.name: m for m in members}
    assert (by_name["disk"].devmajor, by_name["disk"].devminor) == (8, 1)
    assert by_name[".wh.gone"].mtime == 4_000
    assert by_name["opaque/.wh..wh..opq"].mtime == 4_000
    xattrs = {m.name: m.pax_headers for m in members if m.pax_headers}
    assert xattrs == {
        "kept": {"SCHILY.xattr.user.y": "c"},
        "opaque": {"SCHILY.xattr.trusted.other": "t"},
    }


@pytest.mark.parametrize(
    ("name", "xattr"),
    [("file", "trusted.overlay.metacopy"), ("dir", "trusted.overlay.redirect")],
)
def test_lower_dependent_uppers_refused(scratch: Path, name: str, xattr: str) -> None:
    upper = scratch / "upper"
    target = upper / "a" / name
    if name == "dir":
        target.mkdir(parents=True)
    else:
        target.parent.mkdir(parents=True)
        target.write_bytes(b"")
    os.setxattr(target, xattr, b"/elsewhere" if name == "dir" else b"")
    with pytest.raises(LazybuildError, match=f"{target}.*{xattr}"):
        _tar_bytes(upper)
