"""type=local's copy: every kind of entry and its metadata survives."""

from __future__ import annotations

import os
import socket
import stat
from pathlib import Path

import pytest

from lazybuild.exporter.rootfscopy import copy_rootfs
from tests.support.trees import directory_tree


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    root = tmp_path / "rootfs"
    (root / "etc" / "empty").mkdir(parents=True)
    (root / "bin").mkdir()
    (root / "etc" / "hosts").write_bytes(b"127.0.0.1 localhost\n")
    (root / "bin" / "tool").write_bytes(b"\x7fELF" + os.urandom(3000))
    os.chmod(root / "bin" / "tool", 0o4755)
    os.link(root / "bin" / "tool", root / "bin" / "tool-again")
    os.symlink("/etc/hosts", root / "etc" / "absolute-link")
    os.symlink("../nowhere", root / "etc" / "dangling")
    os.mkfifo(root / "etc" / "pipe")
    os.setxattr(root / "etc" / "hosts", "user.origin", b"\x00bin\xff")
    os.chmod(root / "etc" / "empty", 0o500)  # read-only directory: children first
    if os.geteuid() == 0:
        os.lchown(root / "etc" / "hosts", 1234, 5678)
        os.mknod(root / "etc" / "null", stat.S_IFCHR | 0o666, os.makedev(1, 3))
    for path in [root / "etc" / "hosts", root / "bin" / "tool", root / "etc"]:
        os.utime(path, (1_000_000, 1_600_000_000))
    os.utime(root / "etc" / "absolute-link", (5, 1_500_000_000), follow_symlinks=False)
    return root


def test_copy_keeps_everything_a_layer_can_hold(tree: Path, tmp_path: Path) -> None:
    dest = tmp_path / "out"
    stats = copy_rootfs(tree, dest)
    source = directory_tree(tree)
    copied = directory_tree(dest)
    assert copied.entries == source.entries
    assert copied.hardlinks == source.hardlinks == {frozenset({"bin/tool", "bin/tool-again"})}
    assert stats.hardlinks == 1
    assert os.readlink(dest / "etc" / "absolute-link") == "/etc/hosts"
    assert os.lstat(dest / "etc" / "absolute-link").st_mtime == 1_500_000_000
    assert os.stat(dest / "etc").st_mtime == 1_600_000_000  # after its children were made
    if os.geteuid() == 0:
        assert copied.entries["etc/null"].device == (1, 3)
        assert copied.entries["etc/hosts"].uid == 1234
        assert stats.unset_owners == 0


def test_copy_into_an_existing_directory_replaces_names_and_keeps_others(
    tree: Path, tmp_path: Path
) -> None:
    dest = tmp_path / "out"
    (dest / "etc" / "hosts").mkdir(parents=True)  # a directory where a file goes
    (dest / "bin").write_bytes(b"a file where a directory goes")
    (dest / "keep").write_bytes(b"mine")
    copy_rootfs(tree, dest)
    assert (dest / "etc" / "hosts").read_bytes() == b"127.0.0.1 localhost\n"
    assert (dest / "bin" / "tool").is_file()
    assert (dest / "keep").read_bytes() == b"mine"


def test_sockets_are_skipped(tmp_path: Path) -> None:
    (tmp_path / "src").mkdir()
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(tmp_path / "src" / "sock"))
        stats = copy_rootfs(tmp_path / "src", tmp_path / "out")
    assert stats.skipped_sockets == 1
    assert list((tmp_path / "out").iterdir()) == []
