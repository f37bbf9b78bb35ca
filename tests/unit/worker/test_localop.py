"""The build context copied into a layer, as BuildKit's context transfer delivers it."""

from __future__ import annotations

import os
import socket
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from lazybuild.context.listing import BuildContext
from lazybuild.worker.localop import copy_context


@pytest.fixture
def context_with_socket(tmp_path: Path) -> Iterator[Path]:
    root = tmp_path / "ctx"
    (root / "dir").mkdir(parents=True)
    (root / "dir" / "file").write_text("data")
    os.mkfifo(root / "fifo")
    # AF_UNIX paths are short: bind from inside the directory.
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    cwd = os.getcwd()
    os.chdir(root)
    try:
        server.bind("socket.sock")
    finally:
        os.chdir(cwd)
    (root / "socket.sock").chmod(0o751)
    try:
        yield root
    finally:
        server.close()


def test_a_socket_becomes_an_empty_regular_file(context_with_socket: Path, tmp_path: Path) -> None:
    # BuildKit's testCopySocket: COPY . / of a context holding a socket.
    dest = tmp_path / "layer"
    dest.mkdir()
    copy_context(BuildContext(context_with_socket, None), dest)
    copied = (dest / "socket.sock").lstat()
    assert stat.S_ISREG(copied.st_mode)
    assert (copied.st_size, stat.S_IMODE(copied.st_mode)) == (0, 0o751)
    assert (copied.st_uid, copied.st_gid) == (0, 0)
    assert (dest / "dir" / "file").read_text() == "data"
    assert not (dest / "fifo").exists()  # fifos and devices are still not sent
