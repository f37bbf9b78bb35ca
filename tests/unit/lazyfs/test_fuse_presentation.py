"""LazyFilesystem over real eStargz indexes, without a mount: the handlers are called directly."""

from __future__ import annotations

import errno
import logging
import os
import stat
import tarfile
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar, cast

import pyfuse3
import pytest
import trio

from lazybuild.errors import DigestMismatchError
from lazybuild.estargz import LayerIndex, Node, decompress_chunk
from lazybuild.lazyfs.fuse import LazyFilesystem
from lazybuild.lazyfs.inodes import ROOT_INODE
from tests.unit.estargz.esgz_helpers import Member, make_tar, open_blob, pseudo_random, write

T = TypeVar("T")
CTX = cast(pyfuse3.RequestContext, None)  # the handlers under test never look at it


class BlobContent:
    """The LayerContent of an in-memory eStargz blob, verified like the real one."""

    def __init__(self, members: list[Member], prioritized: tuple[str, ...] = ()) -> None:
        options: dict[str, Any] = {"prioritized_files": list(prioritized)} if prioritized else {}
        self.blob, _ = write(make_tar(members), **options)
        self.index: LayerIndex = open_blob(self.blob).index
        self.reads: list[tuple[str, int, int]] = []
        self.fail_with: Exception | None = None

    async def read(self, node: Node, offset: int, size: int) -> bytes:
        self.reads.append((node.name, offset, size))
        if self.fail_with is not None:
            raise self.fail_with
        data = b"".join(decompress_chunk(self.blob[c.offset : c.end], c) for c in node.chunks)
        return data[offset : offset + size]


def run(function: Callable[[], Awaitable[T]]) -> T:
    return trio.run(function)


MEMBERS = [
    Member("./", tarfile.DIRTYPE, mode=0o755),
    Member("etc/", tarfile.DIRTYPE, mode=0o755, mtime=1_600_000_000),
    Member("etc/.wh.motd", data=b"", uid=7, gid=8),
    Member("etc/.wh.hosts"),
    Member("etc/hosts", data=b"127.0.0.1 localhost\n", mode=0o644),
    Member("etc/.wh..wh.plnk"),
    Member("opt/", tarfile.DIRTYPE, mode=0o700),
    Member("opt/.wh..wh..opq"),
    Member("opt/new.txt", data=b"new\n"),
    Member("bin/", tarfile.DIRTYPE, mode=0o755),
    Member("bin/tool", data=pseudo_random(200_000, 1), mode=0o4755, uid=1000, gid=100),
    Member("bin/alias", tarfile.LNKTYPE, linkname="bin/tool"),
    Member("bin/sym", tarfile.SYMTYPE, linkname="tool", mode=0o777),
    Member("dev/", tarfile.DIRTYPE, mode=0o755),
    Member("dev/null", tarfile.CHRTYPE, mode=0o666, devmajor=1, devminor=3),
    Member("dev/sda", tarfile.BLKTYPE, mode=0o660, devmajor=8, devminor=0),
    Member("dev/pipe", tarfile.FIFOTYPE, mode=0o600),
    Member("x", data=b"xattr", xattrs={"user.kind": "demo"}),
]


@pytest.fixture
def content() -> BlobContent:
    return BlobContent(MEMBERS)


@pytest.fixture
def fs(content: BlobContent) -> LazyFilesystem:
    filesystem = LazyFilesystem()
    filesystem.add_layer("layer", content)
    return filesystem


async def walk(fs: LazyFilesystem, path: str) -> pyfuse3.EntryAttributes:
    attributes = await fs.getattr(ROOT_INODE, CTX)
    for part in ["layer", *filter(None, path.split("/"))]:
        attributes = await fs.lookup(attributes.st_ino, part.encode(), CTX)
    return attributes


def listing(fs: LazyFilesystem, inode: int, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    names: list[str] = []

    def reply(token: object, name: bytes, attr: pyfuse3.EntryAttributes, next_id: int) -> bool:
        names.append(name.decode())
        return True

    monkeypatch.setattr(pyfuse3, "readdir_reply", reply)
    run(lambda: fs.readdir(inode, 0, cast(pyfuse3.ReaddirToken, None)))
    return names


def test_whiteouts_become_char_devices_and_dot_wh_names_are_hidden(
    fs: LazyFilesystem, monkeypatch: pytest.MonkeyPatch
) -> None:
    etc = run(lambda: walk(fs, "etc"))
    assert listing(fs, etc.st_ino, monkeypatch) == ["hosts", "motd"]
    motd = run(lambda: walk(fs, "etc/motd"))
    assert stat.S_ISCHR(motd.st_mode) and motd.st_rdev == 0
    assert (motd.st_uid, motd.st_gid) == (7, 8)
    # A real entry wins over a whiteout of the same name in the same layer.
    hosts = run(lambda: walk(fs, "etc/hosts"))
    assert stat.S_ISREG(hosts.st_mode) and hosts.st_size == 20
    for hidden in (".wh.motd", ".wh.hosts", ".wh..wh.plnk"):
        # Absent, as a negative entry the kernel may cache (layers never change).
        absent = run(lambda name=hidden: walk(fs, f"etc/{name}"))  # type: ignore[misc]
        assert absent.st_ino == 0 and absent.entry_timeout > 0


def test_whiteout_inode_is_stable(fs: LazyFilesystem) -> None:
    first = run(lambda: walk(fs, "etc/motd")).st_ino
    assert run(lambda: walk(fs, "etc/motd")).st_ino == first
    assert run(lambda: fs.getattr(first, CTX)).st_rdev == 0


def test_opaque_directory_has_the_overlay_xattr_and_hides_its_marker(
    fs: LazyFilesystem, monkeypatch: pytest.MonkeyPatch
) -> None:
    opt = run(lambda: walk(fs, "opt"))
    assert listing(fs, opt.st_ino, monkeypatch) == ["new.txt"]
    assert run(lambda: fs.getxattr(opt.st_ino, b"trusted.overlay.opaque", CTX)) == b"y"
    assert b"trusted.overlay.opaque" in run(lambda: fs.listxattr(opt.st_ino, CTX))
    etc = run(lambda: walk(fs, "etc"))
    with pytest.raises(pyfuse3.FUSEError) as caught:
        run(lambda: fs.getxattr(etc.st_ino, b"trusted.overlay.opaque", CTX))
    assert caught.value.errno == pyfuse3.ENOATTR


def test_layer_root_hides_toc_and_landmarks(monkeypatch: pytest.MonkeyPatch) -> None:
    for prioritized in ((), ("bin/tool",)):
        content = BlobContent(MEMBERS, prioritized)
        landmark = ".prefetch.landmark" if prioritized else ".no.prefetch.landmark"
        assert content.index.lookup(landmark) is not None
        fs = LazyFilesystem()
        fs.add_layer("layer", content)
        root = run(lambda fs=fs: walk(fs, ""))  # type: ignore[misc]
        assert listing(fs, root.st_ino, monkeypatch) == ["bin", "dev", "etc", "opt", "x"]
        hidden = run(lambda fs=fs, name=landmark: walk(fs, name))  # type: ignore[misc]
        assert hidden.st_ino == 0


def test_hardlinks_share_one_inode(fs: LazyFilesystem) -> None:
    tool = run(lambda: walk(fs, "bin/tool"))
    alias = run(lambda: walk(fs, "bin/alias"))
    assert tool.st_ino == alias.st_ino
    assert tool.st_nlink == alias.st_nlink == 2


def test_metadata_of_every_file_type(fs: LazyFilesystem) -> None:
    tool = run(lambda: walk(fs, "bin/tool"))
    assert stat.S_IMODE(tool.st_mode) == 0o4755 and stat.S_ISREG(tool.st_mode)
    assert (tool.st_uid, tool.st_gid, tool.st_size) == (1000, 100, 200_000)
    assert tool.st_blocks == -(-200_000 // 512)
    assert tool.st_mtime_ns == tool.st_ctime_ns == 1_700_000_000 * 10**9
    etc = run(lambda: walk(fs, "etc"))
    assert stat.S_ISDIR(etc.st_mode) and etc.st_mtime_ns == 1_600_000_000 * 10**9
    assert run(lambda: walk(fs, "")).st_nlink == 2 + 4  # bin dev etc opt
    null = run(lambda: walk(fs, "dev/null"))
    assert stat.S_ISCHR(null.st_mode) and null.st_rdev == os.makedev(1, 3)
    sda = run(lambda: walk(fs, "dev/sda"))
    assert stat.S_ISBLK(sda.st_mode) and sda.st_rdev == os.makedev(8, 0)
    assert stat.S_ISFIFO(run(lambda: walk(fs, "dev/pipe")).st_mode)
    sym = run(lambda: walk(fs, "bin/sym"))
    assert stat.S_ISLNK(sym.st_mode) and sym.st_size == 4
    assert run(lambda: fs.readlink(sym.st_ino, CTX)) == b"tool"
    x = run(lambda: walk(fs, "x"))
    assert run(lambda: fs.getxattr(x.st_ino, b"user.kind", CTX)) == b"demo"
    assert list(run(lambda: fs.listxattr(x.st_ino, CTX))) == [b"user.kind"]


def test_read_clamps_to_the_file_and_logs_accesses(
    fs: LazyFilesystem, content: BlobContent
) -> None:
    accesses: list[tuple[str, str, int, int, int]] = []
    fs.access_log = lambda *access: accesses.append(access)

    async def read_tool() -> tuple[bytes, bytes]:
        tool = await walk(fs, "bin/tool")
        info = await fs.open(tool.st_ino, os.O_RDONLY, CTX)
        middle = await fs.read(info.fh, 100_000, 1000)
        tail = await fs.read(info.fh, 199_990, 4096)
        assert await fs.read(info.fh, 200_000, 4096) == b""
        await fs.release(info.fh)
        return middle, tail

    middle, tail = run(read_tool)
    data = pseudo_random(200_000, 1)
    assert middle == data[100_000:101_000] and tail == data[199_990:]
    assert content.reads[-1] == ("bin/tool", 199_990, 10)
    # The open (nothing read), then each read that returned bytes, with the file's size.
    assert accesses == [
        ("layer", "bin/tool", 0, 0, 200_000),
        ("layer", "bin/tool", 100_000, 1000, 200_000),
        ("layer", "bin/tool", 199_990, 10, 200_000),
    ]


def test_read_error_is_eio_with_one_log_line(
    fs: LazyFilesystem, content: BlobContent, caplog: pytest.LogCaptureFixture
) -> None:
    content.fail_with = DigestMismatchError("chunk sha256:abc does not verify")

    async def read_hosts() -> None:
        hosts = await walk(fs, "etc/hosts")
        info = await fs.open(hosts.st_ino, os.O_RDONLY, CTX)
        await fs.read(info.fh, 0, 4096)

    with caplog.at_level(logging.ERROR), pytest.raises(pyfuse3.FUSEError) as caught:
        run(read_hosts)
    assert caught.value.errno == errno.EIO
    (record,) = caplog.records
    assert "layer layer: /etc/hosts: read failed: chunk sha256:abc" in record.getMessage()


def test_writes_are_refused(fs: LazyFilesystem) -> None:
    hosts = run(lambda: walk(fs, "etc/hosts"))
    for flags in (os.O_WRONLY, os.O_RDWR):
        with pytest.raises(pyfuse3.FUSEError) as caught:
            run(lambda flags=flags: fs.open(hosts.st_ino, flags, CTX))  # type: ignore[misc]
        assert caught.value.errno == errno.EROFS
    with pytest.raises(pyfuse3.FUSEError) as caught:
        run(lambda: fs.mkdir(hosts.st_ino, b"d", 0o755, CTX))
    assert caught.value.errno == errno.EROFS


def test_statfs_reports_the_layers(fs: LazyFilesystem) -> None:
    data = run(lambda: fs.statfs(CTX))
    assert data.f_bsize == 4096 and data.f_namemax == 255
    assert data.f_blocks >= 200_000 // 4096 and data.f_files > len(MEMBERS)
