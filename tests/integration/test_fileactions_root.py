"""File actions that change owners: only root may give files to other users."""

from __future__ import annotations

import io
import os
import struct
import tarfile
from pathlib import Path
from typing import Any

import pytest

from lazybuild.graph.ops import ChownOpt, Copy, Mkdir, Mkfile
from lazybuild.worker.fileactions import apply_actions

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="changing owners needs root"),
]

# vfs_cap_data revision 2, effective, permitted: CAP_NET_BIND_SERVICE (setcap's output).
CAPABILITY = struct.pack("<IIIII", 0x02000001, 1 << 10, 0, 0, 0)


@pytest.fixture
def roots(tmp_path: Path) -> tuple[Path, Path]:
    src, dest = tmp_path / "src", tmp_path / "dest"
    src.mkdir()
    (dest / "etc").mkdir(parents=True)
    (dest / "etc/passwd").write_text("root:x:0:0::/root:/bin/sh\napp:x:1000:1001::/app:/bin/sh\n")
    (dest / "etc/group").write_text("root:x:0:\napp:x:1001:\nstaff:x:50:\n")
    return src, dest


def owner_of(path: Path) -> tuple[int, int]:
    st = os.lstat(path)
    return st.st_uid, st.st_gid


def copy(source_root: Path, dest_root: Path, /, **fields: Any) -> None:
    apply_actions([Copy(src_input=0, **fields)], dest_root=dest_root, sources=[source_root])


def test_chown_by_name_owns_every_copied_entry_and_made_parent(roots: tuple[Path, Path]) -> None:
    src, dest = roots
    (src / "dir/sub").mkdir(parents=True)
    (src / "dir/sub/f").write_text("f")
    (src / "dir/link").symlink_to("sub/f")
    copy(src, dest, src="/dir", dest="/srv/app", chown=ChownOpt("app"), create_dest_path=True)
    for rel in ("srv", "srv/app", "srv/app/sub", "srv/app/sub/f", "srv/app/link"):
        assert owner_of(dest / rel) == (1000, 1001), rel


def test_owners_are_kept_without_chown(roots: tuple[Path, Path]) -> None:
    src, dest = roots
    (src / "f").write_text("f")
    os.chown(src / "f", 1234, 5678)
    (src / "link").symlink_to("f")
    os.lchown(src / "link", 4321, 8765)
    copy(src, dest, src="/f", dest="/f")
    copy(src, dest, src="/link", dest="/link")
    assert owner_of(dest / "f") == (1234, 5678)
    assert owner_of(dest / "link") == (4321, 8765)


def test_chown_keeps_set_id_bits_and_file_capabilities(roots: tuple[Path, Path]) -> None:
    src, dest = roots
    tool = src / "tool"
    tool.write_text("#!")
    os.chmod(tool, 0o4755)
    os.setxattr(tool, "security.capability", CAPABILITY)
    copy(src, dest, src="/tool", dest="/tool", chown=ChownOpt("app", "staff"))
    copied = dest / "tool"
    assert owner_of(copied) == (1000, 50)
    assert os.lstat(copied).st_mode & 0o7777 == 0o4755
    assert os.getxattr(copied, "security.capability") == os.getxattr(tool, "security.capability")


def archive(*members: tuple[str, int, int]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for name, uid, gid in members:
            info = tarfile.TarInfo(name)
            info.uid, info.gid = uid, gid
            info.size = 1
            tar.addfile(info, io.BytesIO(b"x"))
    return buffer.getvalue()


def add(source_root: Path, dest_root: Path, **fields: Any) -> None:
    copy(
        source_root,
        dest_root,
        src="/a.tar",
        dest="/out/",
        attempt_unpack_docker_compatibility=True,
        create_dest_path=True,
        **fields,
    )


def test_archive_owners_are_kept(roots: tuple[Path, Path]) -> None:
    src, dest = roots
    (src / "a.tar").write_bytes(archive(("f", 123, 456), ("d/g", 7, 8)))
    add(src, dest)
    assert owner_of(dest / "out/f") == (123, 456)
    assert owner_of(dest / "out/d/g") == (7, 8)


def test_chown_overrides_archive_owners(roots: tuple[Path, Path]) -> None:
    src, dest = roots
    (src / "a.tar").write_bytes(archive(("f", 123, 456), ("d/g", 7, 8)))
    add(src, dest, chown=ChownOpt("1000", "50"))
    for rel in ("out", "out/f", "out/d", "out/d/g"):
        assert owner_of(dest / rel) == (1000, 50), rel


def test_mkdir_and_mkfile_chown(roots: tuple[Path, Path]) -> None:
    _, dest = roots
    apply_actions(
        [
            Mkdir(path="/home/app/work", make_parents=True, chown=ChownOpt("app")),
            Mkfile(path="/home/app/work/f", data=b"x", chown=ChownOpt("2000", "staff")),
        ],
        dest_root=dest,
        sources=[],
    )
    for rel in ("home", "home/app", "home/app/work"):
        assert owner_of(dest / rel) == (1000, 1001), rel
    assert owner_of(dest / "home/app/work/f") == (2000, 50)
