"""write_upper_as_tar on upper directories built by hand (no root, no overlay mount)."""

from __future__ import annotations

import io
import os
import socket
import tarfile
from pathlib import Path

import pytest

from lazybuild.errors import LazybuildError
from lazybuild.snapshot.diff import write_upper_as_tar


def _tar(upper: Path, epoch: int | None = None) -> bytes:
    out = io.BytesIO()
    write_upper_as_tar(upper, out, source_date_epoch=epoch)
    return out.getvalue()


def _members(data: bytes) -> list[tarfile.TarInfo]:
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tar:
        return tar.getmembers()


@pytest.fixture
def upper(tmp_path: Path) -> Path:
    root = tmp_path / "upper"
    (root / "b" / "c").mkdir(parents=True)
    (root / "a-b").write_bytes(b"dash\n")
    (root / "b" / "file").write_bytes(b"hello\n")
    (root / "b" / "c" / "deep").write_bytes(b"")
    os.chmod(root / "b" / "file", 0o640)
    os.link(root / "b" / "file", root / "a-hard")
    os.symlink("../../../etc/passwd", root / "b" / "escape")
    os.mkfifo(root / "fifo")
    os.setxattr(root / "b" / "file", "user.x", b"\xff\x00bin")
    for path in [root / "a-b", root / "b" / "file", root / "b" / "c" / "deep", root / "fifo"]:
        os.utime(path, (2_000_000_000, 2_000_000_000))
    os.utime(root / "b" / "escape", (1_000, 1_000), follow_symlinks=False)
    return root


def test_order_types_and_metadata(upper: Path) -> None:
    members = _members(_tar(upper))
    assert [m.name for m in members] == [
        "a-b",
        "a-hard",
        "b",
        "b/c",
        "b/c/deep",
        "b/escape",
        "b/file",
        "fifo",
    ]
    by_name = {m.name: m for m in members}
    # The first name in order holds the data; the later one is a hardlink to it.
    assert by_name["a-hard"].isreg() and by_name["a-hard"].size == 6
    assert by_name["a-hard"].mode == 0o640
    assert by_name["b/file"].islnk() and by_name["b/file"].linkname == "a-hard"
    assert (
        by_name["a-hard"].pax_headers["SCHILY.xattr.user.x"].encode("utf-8", "surrogateescape")
        == b"\xff\x00bin"
    )
    assert by_name["b/escape"].issym()
    assert by_name["b/escape"].linkname == "../../../etc/passwd"
    assert by_name["fifo"].isfifo()
    assert by_name["b"].isdir()
    for member in members:
        assert member.uid == os.getuid() and member.gid == os.getgid()
        assert member.uname == "" and member.gname == ""
        assert isinstance(member.mtime, int)


def test_mtimes_clamped_to_epoch(upper: Path) -> None:
    members = {m.name: m for m in _members(_tar(upper, epoch=1_500_000_000))}
    assert members["a-b"].mtime == 1_500_000_000  # newer: clamped
    assert members["b/escape"].mtime == 1_000  # older: kept
    assert all(m.mtime <= 1_500_000_000 for m in members.values())


def test_deterministic(upper: Path) -> None:
    assert _tar(upper, 1_000_000) == _tar(upper, 1_000_000)


def test_pax_format(upper: Path) -> None:
    data = _tar(upper)
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tar:
        assert tar.pax_headers == {}
        assert tar.getmember("a-hard").pax_headers  # carries the xattr record
    assert len(data) % tarfile.RECORDSIZE == 0


def test_sockets_are_skipped(tmp_path: Path) -> None:
    upper = tmp_path / "u"
    upper.mkdir()
    (upper / "kept").write_bytes(b"x")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(str(upper / "sock"))
        assert [m.name for m in _members(_tar(upper))] == ["kept"]
    finally:
        sock.close()


def test_symlinked_directory_not_followed(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret").write_bytes(b"no")
    upper = tmp_path / "u"
    upper.mkdir()
    os.symlink(outside, upper / "link")
    members = _members(_tar(upper))
    assert [(m.name, m.issym()) for m in members] == [("link", True)]


def test_empty_upper_is_an_empty_layer(tmp_path: Path) -> None:
    assert _members(_tar(tmp_path)) == []


def test_reserved_names_refused(tmp_path: Path) -> None:
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / ".wh.x").write_bytes(b"")
    with pytest.raises(LazybuildError, match=r"d/\.wh\.x"):
        _tar(tmp_path)


def test_missing_upper_is_named(tmp_path: Path) -> None:
    with pytest.raises(LazybuildError, match="nowhere"):
        _tar(tmp_path / "nowhere")


def test_not_a_directory(tmp_path: Path) -> None:
    (tmp_path / "f").write_bytes(b"")
    with pytest.raises(LazybuildError, match="not a directory"):
        _tar(tmp_path / "f")


def test_unreadable_file_is_named(tmp_path: Path) -> None:
    if os.geteuid() == 0:
        pytest.skip("root reads everything")
    (tmp_path / "locked").write_bytes(b"x")
    os.chmod(tmp_path / "locked", 0)
    with pytest.raises(LazybuildError, match="locked"):
        _tar(tmp_path)
