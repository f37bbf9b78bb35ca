"""The root directory of the mount: layers come and go, listings and inodes stay consistent."""

from __future__ import annotations

import errno
import tarfile
from typing import cast

import pyfuse3
import pytest
import trio

from lazybuild.lazyfs.fuse import LazyFilesystem
from lazybuild.lazyfs.inodes import ROOT_INODE
from tests.unit.estargz.esgz_helpers import Member
from tests.unit.lazyfs.test_fuse_presentation import CTX, BlobContent

TOKEN = cast(pyfuse3.ReaddirToken, None)


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


def small_layer(name: str) -> BlobContent:
    return BlobContent([Member(f"{name}.txt", data=name.encode())])


def test_root_listing_offsets_survive_adds_and_removes(monkeypatch: pytest.MonkeyPatch) -> None:
    fs = LazyFilesystem()
    for name in ("a", "b", "c", "d"):
        fs.add_layer(name, small_layer(name))
    lister = Lister(room=2)
    monkeypatch.setattr(pyfuse3, "readdir_reply", lister.reply)
    first = lister.read(fs, ROOT_INODE, 0)
    assert [name for name, _ in first] == ["a", "b"]
    fs.remove_layer("a")  # already listed
    fs.remove_layer("c")  # not listed yet: may vanish, must not shift others
    fs.add_layer("e", small_layer("e"))
    second = lister.read(fs, ROOT_INODE, first[-1][1])
    assert [name for name, _ in second] == ["d", "e"]
    assert lister.read(fs, ROOT_INODE, second[-1][1]) == []


def test_directory_listing_resumes_at_its_offset(monkeypatch: pytest.MonkeyPatch) -> None:
    members = [Member("d/", tarfile.DIRTYPE)] + [Member(f"d/f{i:02}", data=b"x") for i in range(7)]
    fs = LazyFilesystem()
    fs.add_layer("layer", BlobContent(members))
    layer = trio.run(fs.lookup, ROOT_INODE, b"layer", CTX)
    directory = trio.run(fs.lookup, layer.st_ino, b"d", CTX)
    lister = Lister(room=3)
    monkeypatch.setattr(pyfuse3, "readdir_reply", lister.reply)
    names, offset = [], 0
    while batch := lister.read(fs, directory.st_ino, offset):
        names += [name for name, _ in batch]
        offset = batch[-1][1]
    assert names == [f"f{i:02}" for i in range(7)]


def test_removed_layer_disappears_but_known_inodes_stay_valid_until_forgotten() -> None:
    fs = LazyFilesystem()
    fs.add_layer("a", small_layer("a"))
    root = trio.run(fs.lookup, ROOT_INODE, b"a", CTX)
    file = trio.run(fs.lookup, root.st_ino, b"a.txt", CTX)
    fs.remove_layer("a")
    with pytest.raises(pyfuse3.FUSEError) as caught:
        trio.run(fs.lookup, ROOT_INODE, b"a", CTX)
    assert caught.value.errno == errno.ENOENT
    assert trio.run(fs.getattr, file.st_ino, CTX).st_size == 1
    trio.run(fs.forget, [(root.st_ino, 1), (file.st_ino, 1)])
    with pytest.raises(pyfuse3.FUSEError):
        trio.run(fs.getattr, file.st_ino, CTX)


def test_inodes_differ_between_layers_and_are_stable() -> None:
    fs = LazyFilesystem()
    fs.add_layer("a", small_layer("same"))
    fs.add_layer("b", small_layer("same"))
    a_root = trio.run(fs.lookup, ROOT_INODE, b"a", CTX)
    b_root = trio.run(fs.lookup, ROOT_INODE, b"b", CTX)
    a_file = trio.run(fs.lookup, a_root.st_ino, b"same.txt", CTX)
    b_file = trio.run(fs.lookup, b_root.st_ino, b"same.txt", CTX)
    assert len({a_root.st_ino, b_root.st_ino, a_file.st_ino, b_file.st_ino, ROOT_INODE}) == 5
    assert trio.run(fs.lookup, a_root.st_ino, b"same.txt", CTX).st_ino == a_file.st_ino
    with pytest.raises(ValueError, match="already mounted"):
        fs.add_layer("a", small_layer("x"))
