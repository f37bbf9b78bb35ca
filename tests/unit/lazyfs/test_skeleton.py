"""The skeleton of a layer stack: the merged view's directories and symlinks."""

from __future__ import annotations

import dataclasses
import os
import stat
import tarfile
from pathlib import Path

import pytest

from lazybuild.estargz import LayerIndex
from lazybuild.lazyfs.skeleton import (
    MergedEntry,
    merged_view,
    skeleton_name,
    skeleton_tar,
    write_skeleton,
)
from tests.unit.estargz.esgz_helpers import Member, make_tar, open_blob, write

UID, GID = os.getuid(), os.getgid()


def _index(members: list[Member]) -> LayerIndex:
    # Owned by whoever runs the tests, so writing a skeleton needs no root.
    mine = [dataclasses.replace(member, uid=UID, gid=GID) for member in members]
    blob, _ = write(make_tar(mine))
    return open_blob(blob).index


def _names(entry: MergedEntry, path: str = "") -> dict[str, str]:
    found = {path: entry.node.type} if path else {}
    for name, child in (entry.children or {}).items():
        found.update(_names(child, f"{path}/{name}" if path else name))
    return found


BOTTOM = [
    Member("usr/", tarfile.DIRTYPE, mode=0o755),
    Member("usr/lib/", tarfile.DIRTYPE, mode=0o755),
    Member("usr/lib/go", tarfile.SYMTYPE, linkname="go-1.19"),
    Member("usr/lib/go-1.19/", tarfile.DIRTYPE, mode=0o755),
    Member("usr/lib/go-1.19/src", tarfile.SYMTYPE, linkname="../../share/go-1.19/src"),
    Member("etc/", tarfile.DIRTYPE, mode=0o755),
    Member("etc/alternatives/", tarfile.DIRTYPE, mode=0o755),
    Member("etc/alternatives/cc", tarfile.SYMTYPE, linkname="/usr/bin/gcc"),
    Member("etc/passwd", data=b"root:x:0:0::/root:/bin/sh\n"),
    Member("opt/", tarfile.DIRTYPE, mode=0o755),
    Member("opt/old/", tarfile.DIRTYPE, mode=0o755),
    Member("opt/link", tarfile.SYMTYPE, linkname="old"),
    Member("var/", tarfile.DIRTYPE, mode=0o755),
    Member("var/run", tarfile.SYMTYPE, linkname="/run"),
    Member("bin/", tarfile.DIRTYPE, mode=0o755),
    Member("bin/dash", data=b"\x7fELF"),
    Member("bin/sh", tarfile.SYMTYPE, linkname="dash"),  # to a file
    Member("lib", tarfile.SYMTYPE, linkname="usr/lib"),  # to a directory
    Member("usr/lib/golink", tarfile.SYMTYPE, linkname="/usr/lib/go"),  # via another link
    Member("loop", tarfile.SYMTYPE, linkname="loop"),
]
TOP = [
    Member("etc/", tarfile.DIRTYPE, mode=0o750, mtime=1_650_000_000),
    Member("etc/alternatives/.wh.cc"),  # deleted
    Member("opt/", tarfile.DIRTYPE, mode=0o750, mtime=1_650_000_000),
    Member("opt/.wh..wh..opq"),  # opaque: hides old/ and link
    Member("opt/new", tarfile.SYMTYPE, linkname="../usr/lib/go-1.19"),
    Member("var/run/", tarfile.DIRTYPE, mode=0o755),  # a symlink replaced by a directory
    Member("usr/lib/go-1.19/src", data=b"now a file\n"),  # a symlink replaced by a file
]


def test_the_merged_view_applies_whiteouts_opaque_dirs_and_replacements() -> None:
    root = merged_view([_index(BOTTOM), _index(TOP)])
    names = _names(root)
    assert names["usr/lib/go"] == "symlink"
    assert names["usr/lib/go-1.19/src"] == "reg"
    assert "etc/alternatives/cc" not in names and names["etc/alternatives"] == "dir"
    assert "opt/old" not in names and "opt/link" not in names and names["opt/new"] == "symlink"
    assert names["var/run"] == "dir"
    assert names["etc/passwd"] == "reg"
    assert names["bin/sh"] == names["lib"] == names["loop"] == "symlink"
    # A directory's attributes are the top-most layer's.
    etc = (root.children or {})["etc"].node
    assert etc.mode == 0o750 and etc.mtime == 1_650_000_000


def test_the_skeleton_holds_the_symlinks_and_their_directories_with_attributes(
    tmp_path: Path,
) -> None:
    root = merged_view([_index(BOTTOM), _index(TOP)])
    target = tmp_path / "skeletons" / skeleton_name(["sha256:a", "sha256:b"])
    archive = skeleton_tar(root)
    assert archive is not None
    write_skeleton(archive, target)
    found = sorted(str(p.relative_to(target)) for p in target.rglob("*"))
    # The symlinks that lead to directories and the directories that hold them; other
    # symlinks (to files, nowhere, themselves) and directories stay out.
    assert found == ["lib", "opt", "opt/new", "usr", "usr/lib", "usr/lib/go", "usr/lib/golink"]
    assert os.readlink(target / "usr/lib/go") == "go-1.19"
    top = target.lstat()  # the root takes the top layer's root directory's attributes
    assert stat.S_IMODE(top.st_mode) == root.node.mode and top.st_mtime == (root.node.mtime or 0)
    opt = (target / "opt").lstat()
    assert stat.S_IMODE(opt.st_mode) == 0o750 and opt.st_mtime == 1_650_000_000
    link = (target / "opt/new").lstat()
    assert stat.S_ISLNK(link.st_mode) and link.st_mtime == 1_700_000_000
    # Written once: a second writer keeps the first copy and leaves nothing behind.
    write_skeleton(archive, target)
    assert sorted(p.name for p in target.parent.iterdir()) == [target.name]


def test_skeleton_names_depend_on_the_whole_stack_in_order() -> None:
    assert skeleton_name(["a", "b"]) != skeleton_name(["b", "a"])
    assert skeleton_name(["a", "b"]) == skeleton_name(("a", "b"))


def test_a_directory_with_xattrs_means_no_skeleton() -> None:
    with_xattrs = [
        *BOTTOM,
        Member("srv/", tarfile.DIRTYPE, xattrs={"user.kind": "data"}),
        Member("srv/www", tarfile.SYMTYPE, linkname="/usr/lib"),
    ]
    root = merged_view([_index(with_xattrs)])
    with pytest.raises(OSError, match="/srv has xattrs"):
        skeleton_tar(root)


def test_no_symlink_to_a_directory_means_no_skeleton() -> None:
    files_only = [Member("bin/", tarfile.DIRTYPE), Member("bin/sh", tarfile.SYMTYPE, linkname="x")]
    assert skeleton_tar(merged_view([_index(files_only)])) is None
