"""The one tar writer's shared parts: headers from lstat, hardlinks to the first name,
xattr records, the depth-first walk."""

from __future__ import annotations

import io
import os
import tarfile
from pathlib import Path

from lazybuild.untar.writer import TarWriter, depth_first, pax_xattrs, stat_header


def _entries(data: bytes) -> list[tarfile.TarInfo]:
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tar:
        return tar.getmembers()


def test_headers_carry_numeric_owners_and_no_names(tmp_path: Path) -> None:
    (tmp_path / "f").write_bytes(b"abc")
    (tmp_path / "f").chmod(0o640)
    (tmp_path / "l").symlink_to("f")
    f = stat_header("f", os.lstat(tmp_path / "f"), mtime=7, owner=(0, 0))
    link = stat_header("l", os.lstat(tmp_path / "l"), mtime=7, linkname="f")
    assert f is not None and link is not None
    assert (f.type, f.size, f.mode, f.uid, f.gid, f.uname, f.mtime) == (
        tarfile.REGTYPE,
        3,
        0o640,
        0,
        0,
        "",
        7,
    )
    assert (link.type, link.linkname, link.size) == (tarfile.SYMTYPE, "f", 0)


def test_a_socket_has_no_header(tmp_path: Path) -> None:
    import socket

    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(tmp_path / "s"))
        assert stat_header("s", os.lstat(tmp_path / "s"), mtime=0) is None


def test_xattr_records_are_sorted_without_overlayfs_own() -> None:
    records = pax_xattrs(
        {"user.b": b"\xff", "trusted.overlay.opaque": b"y", "security.capability": b"c"}
    )
    assert list(records) == ["SCHILY.xattr.security.capability", "SCHILY.xattr.user.b"]
    assert records["SCHILY.xattr.user.b"].encode("utf-8", "surrogateescape") == b"\xff"


def test_later_names_of_a_file_are_hardlinks_to_the_first(tmp_path: Path) -> None:
    (tmp_path / "a").write_bytes(b"data")
    os.link(tmp_path / "a", tmp_path / "b")
    for link_xattrs in (True, False):
        out = io.BytesIO()
        with TarWriter(out, link_xattrs=link_xattrs) as tar:
            for name in ("a", "b"):
                info = os.lstat(tmp_path / name)
                header = stat_header(name, info, mtime=0, xattrs={"user.k": b"v"})
                assert header is not None
                if not tar.link_to_earlier(header, info):
                    with (tmp_path / name).open("rb") as content:
                        tar.add(header, content)
        first, second = _entries(out.getvalue())
        assert (first.type, first.size) == (tarfile.REGTYPE, 4)
        assert (second.type, second.linkname, second.size) == (tarfile.LNKTYPE, "a", 0)
        assert ("SCHILY.xattr.user.k" in second.pax_headers) == link_xattrs


def test_a_failed_write_leaves_no_end_of_archive() -> None:
    out = io.BytesIO()
    try:
        with TarWriter(out) as tar:
            tar.add(tarfile.TarInfo("x"))
            raise RuntimeError
    except RuntimeError:
        pass
    assert len(out.getvalue()) == 512  # the entry's header, and no end-of-archive blocks


def test_depth_first_visits_children_right_after_their_parent() -> None:
    tree = {"a": ["a/x", "a/y"], "a/x": ["a/x/1"], "b": []}
    seen: list[str] = []

    def visit(name: str) -> list[str] | None:
        seen.append(name)
        return tree.get(name)

    depth_first(["a", "b", "c"], visit)
    assert seen == ["a", "a/x", "a/x/1", "a/y", "b", "c"]


def test_depth_first_is_not_bounded_by_recursion() -> None:
    seen: list[int] = []

    def visit(depth: int) -> list[int] | None:
        seen.append(depth)
        return [depth + 1] if depth < 10_000 else None

    depth_first([0], visit)
    assert len(seen) == 10_001
