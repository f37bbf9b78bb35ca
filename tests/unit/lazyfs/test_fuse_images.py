"""LazyFilesystem over real eStargz indexes, without a mount: the handlers are called
directly. Each layer is an EROFS image file (``/<name>.erofs``) next to the empty
directory it is mounted on (``/<name>``); the presentation of the layer's tree itself
is the image's (tests/unit/erofs)."""

from __future__ import annotations

import errno
import logging
import os
import stat
import tarfile
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar, cast

import pyfuse3
import pytest
import trio

from lazybuild.erofs import build_layout
from lazybuild.errors import DigestMismatchError, LazybuildError
from lazybuild.estargz import LayerIndex, Node, decompress_chunk
from lazybuild.lazyfs.fuse import ROOT_INODE, LazyFilesystem
from tests.unit.estargz.esgz_helpers import Member, make_tar, open_blob, pseudo_random, write

T = TypeVar("T")
CTX = cast(pyfuse3.RequestContext, None)  # the handlers under test never look at it
TOKEN = cast(pyfuse3.ReaddirToken, None)
KERNEL_READ = 128 << 10


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

    async def read_many(self, ranges: Sequence[tuple[Node, int, int]]) -> list[bytes | Exception]:
        results: list[bytes | Exception] = []
        for node, offset, size in ranges:
            try:
                results.append(await self.read(node, offset, size))
            except (LazybuildError, OSError) as exc:
                results.append(exc)
        return results


def run(function: Callable[[], Awaitable[T]]) -> T:
    return trio.run(function)


MEMBERS = [
    Member("./", tarfile.DIRTYPE, mode=0o755),
    Member("etc/", tarfile.DIRTYPE, mode=0o755),
    Member("etc/hosts", data=b"127.0.0.1 localhost\n", mode=0o644),
    Member("etc/motd", data=b"welcome\n", mode=0o644),
    Member("bin/", tarfile.DIRTYPE, mode=0o755),
    Member("bin/tool", data=pseudo_random(200_000, 1), mode=0o755),
    Member("bin/alias", tarfile.LNKTYPE, linkname="bin/tool"),
    Member("bin/sym", tarfile.SYMTYPE, linkname="tool"),
]


def image_of(content: BlobContent, name: str, fs: LazyFilesystem) -> None:
    fs.add_image(name, build_layout(content.index), content)


@pytest.fixture
def content() -> BlobContent:
    return BlobContent(MEMBERS)


@pytest.fixture
def fs(content: BlobContent) -> LazyFilesystem:
    filesystem = LazyFilesystem()
    image_of(content, "layer", filesystem)
    return filesystem


class Lister:
    """A stand-in for pyfuse3.readdir_reply that accepts ``room`` entries per call."""

    def __init__(self, room: int) -> None:
        self.room = room
        self.batch: list[tuple[str, int]] = []

    def reply(
        self, token: object, name: bytes, attr: pyfuse3.EntryAttributes, next_id: int
    ) -> bool:
        if len(self.batch) >= self.room:
            return False
        self.batch.append((name.decode(), next_id))
        return True

    def read(self, fs: LazyFilesystem, inode: int, start: int) -> list[tuple[str, int]]:
        self.batch = []
        trio.run(fs.readdir, inode, start, TOKEN)
        return self.batch


def read_image(fs: LazyFilesystem, name: str) -> bytes:
    """The whole image file, read as the kernel does: in 128 KiB requests."""

    async def main() -> bytes:
        entry = await fs.lookup(ROOT_INODE, f"{name}.erofs".encode(), CTX)
        info = await fs.open(entry.st_ino, os.O_RDONLY, CTX)
        assert info.direct_io  # EROFS caches the files' pages, not the image's
        parts: list[bytes] = []
        while part := await fs.read(info.fh, sum(map(len, parts)), KERNEL_READ):
            parts.append(part)
        await fs.release(info.fh)
        return b"".join(parts)

    return run(main)


def test_each_layer_is_an_image_file_and_an_empty_directory(fs: LazyFilesystem) -> None:
    layout = build_layout(BlobContent(MEMBERS).index)

    async def main() -> None:
        directory = await fs.lookup(ROOT_INODE, b"layer", CTX)
        image = await fs.lookup(ROOT_INODE, b"layer.erofs", CTX)
        assert stat.S_ISDIR(directory.st_mode)
        assert stat.S_ISREG(image.st_mode) and image.st_mode & 0o777 == 0o444
        assert image.st_size == layout.image_size and image.st_size % 4096 == 0
        assert directory.st_ino != image.st_ino
        # Below the mount point nothing is shown, cacheably (st_ino 0: a negative entry).
        assert (await fs.lookup(directory.st_ino, b"etc", CTX)).st_ino == 0
        for parent, name, code in (
            (ROOT_INODE, b"other", errno.ENOENT),
            (ROOT_INODE, b"other.erofs", errno.ENOENT),
            (image.st_ino, b"x", errno.ENOTDIR),
        ):
            with pytest.raises(pyfuse3.FUSEError) as caught:
                await fs.lookup(parent, name, CTX)
            assert caught.value.errno == code
        with pytest.raises(pyfuse3.FUSEError) as caught:
            await fs.open(directory.st_ino, os.O_RDONLY, CTX)
        assert caught.value.errno == errno.EISDIR
        assert await fs.listxattr(image.st_ino, CTX) == []

    run(main)


def test_the_served_image_is_the_layout_with_the_files_bytes(
    fs: LazyFilesystem, content: BlobContent
) -> None:
    accesses: list[tuple[str, str, int, int, int]] = []
    fs.access_log = lambda *access: accesses.append(access)
    served = read_image(fs, "layer")
    layout = build_layout(content.index)
    assert len(served) == layout.image_size
    assert served[: layout.data_start] == layout.metadata
    tool = next(node for node in content.index.walk() if node.name == "bin/tool")
    extent = layout.extents.extent_of(tool)
    assert extent is not None
    assert served[extent.offset : extent.end] == pseudo_random(200_000, 1)
    # Every piece is reported as a read of its file, in file offsets, with the file size.
    tool_reads = [(o, s) for layer, path, o, s, size in accesses if path == "bin/tool"]
    assert all(size == 200_000 for _, path, _, _, size in accesses if path == "bin/tool")
    assert sum(s for _, s in tool_reads) == 200_000 and tool_reads[0][0] == 0
    assert {path for _, path, *_ in accesses} == {"etc/hosts", "etc/motd", "bin/tool"}


def test_a_failed_read_is_eio_with_one_log_line_naming_the_file(
    fs: LazyFilesystem, content: BlobContent, caplog: pytest.LogCaptureFixture
) -> None:
    content.fail_with = DigestMismatchError("chunk sha256:abc does not verify")
    with caplog.at_level(logging.ERROR), pytest.raises(pyfuse3.FUSEError) as caught:
        read_image(fs, "layer")
    assert caught.value.errno == errno.EIO
    messages = [record.getMessage() for record in caplog.records]
    assert messages and all("read failed: chunk sha256:abc" in m for m in messages)
    assert any(m.startswith("layer layer: /") for m in messages)
    assert fs.read_failures()[0]["error"] == "chunk sha256:abc does not verify"


def test_the_metadata_reads_without_touching_the_layer(
    fs: LazyFilesystem, content: BlobContent
) -> None:
    async def main() -> bytes:
        image = await fs.lookup(ROOT_INODE, b"layer.erofs", CTX)
        info = await fs.open(image.st_ino, os.O_RDONLY, CTX)
        return await fs.read(info.fh, 0, 4096)

    assert run(main) == build_layout(content.index).metadata[:4096]
    assert content.reads == []


def test_root_listing_offsets_survive_adds_and_removes(monkeypatch: pytest.MonkeyPatch) -> None:
    fs = LazyFilesystem()
    for name in ("a", "b", "c", "d"):
        image_of(BlobContent([Member(f"{name}.txt", data=name.encode())]), name, fs)
    lister = Lister(room=3)
    monkeypatch.setattr(pyfuse3, "readdir_reply", lister.reply)
    first = lister.read(fs, ROOT_INODE, 0)
    assert [name for name, _ in first] == ["a", "a.erofs", "b"]
    fs.remove_image("a")  # already listed
    fs.remove_image("c")  # not listed yet: may vanish, must not shift others
    image_of(BlobContent([Member("e.txt", data=b"e")]), "e", fs)
    rest = lister.read(fs, ROOT_INODE, first[-1][1])
    rest += lister.read(fs, ROOT_INODE, rest[-1][1])
    assert [name for name, _ in rest] == ["b.erofs", "d", "d.erofs", "e", "e.erofs"]
    assert lister.read(fs, ROOT_INODE, rest[-1][1]) == []
    with pytest.raises(ValueError, match="already mounted"):
        image_of(BlobContent([Member("x", data=b"x")]), "d", fs)
    with pytest.raises(ValueError, match="bad layer name"):
        image_of(BlobContent([Member("x", data=b"x")]), "f.erofs", fs)


def test_writes_are_refused(fs: LazyFilesystem) -> None:
    image = run(lambda: fs.lookup(ROOT_INODE, b"layer.erofs", CTX))
    for flags in (os.O_WRONLY, os.O_RDWR):
        with pytest.raises(pyfuse3.FUSEError) as caught:
            run(lambda flags=flags: fs.open(image.st_ino, flags, CTX))  # type: ignore[misc]
        assert caught.value.errno == errno.EROFS
    with pytest.raises(pyfuse3.FUSEError) as caught:
        run(lambda: fs.mkdir(ROOT_INODE, b"d", 0o755, CTX))
    assert caught.value.errno == errno.EROFS


def test_statfs_reports_the_images(fs: LazyFilesystem, content: BlobContent) -> None:
    data = run(lambda: fs.statfs(CTX))
    assert data.f_bsize == 4096 and data.f_namemax == 255
    assert data.f_blocks == build_layout(content.index).image_size // 4096
    assert data.f_files == 3
