"""Reads of a result for a frontend stay inside the result, whatever its symlinks say,
and are bounded."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from lazybuild.gateway import MAX_READ_BYTES, DirEntry, GatewayError
from lazybuild.gateway.resultfiles import list_directory, read_bytes


@pytest.fixture
def root(tmp_path: Path) -> Path:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret").write_text("host secret\n")
    result = tmp_path / "result"
    (result / "etc").mkdir(parents=True)
    (result / "etc" / "secret").write_text("result's own\n")
    (result / "go.mod").write_text("module example.com/x\n")
    os.symlink("/etc/secret", result / "absolute")
    os.symlink("../../outside/secret", result / "etc" / "climb")
    os.symlink("etc", result / "dirlink")
    os.symlink("loop", result / "loop")
    return result


def test_a_file_is_read_whole_or_in_part(root: Path) -> None:
    assert read_bytes(root, "go.mod", 0, None) == b"module example.com/x\n"
    assert read_bytes(root, "/go.mod", 7, 7) == b"example"
    assert read_bytes(root, "go.mod", 100, None) == b""


def test_symlinks_resolve_inside_the_result(root: Path) -> None:
    assert read_bytes(root, "absolute", 0, None) == b"result's own\n"
    # ../../outside/secret climbs no higher than the result's root: /outside/secret there.
    with pytest.raises(GatewayError, match="No such file"):
        read_bytes(root, "etc/climb", 0, None)
    assert read_bytes(root, "dirlink/secret", 0, None) == b"result's own\n"
    assert read_bytes(root, "../../outside/../etc/secret", 0, None) == b"result's own\n"


def test_what_is_not_a_readable_file_is_a_gateway_error(root: Path) -> None:
    with pytest.raises(GatewayError, match="read_file missing"):
        read_bytes(root, "missing", 0, None)
    with pytest.raises(GatewayError, match="not a regular file"):
        read_bytes(root, "etc", 0, None)
    with pytest.raises(GatewayError, match="is a directory"):
        read_bytes(root, "/", 0, None)
    with pytest.raises(GatewayError, match="symbolic links"):
        read_bytes(root, "loop", 0, None)
    with pytest.raises(GatewayError, match="negative"):
        read_bytes(root, "go.mod", -1, None)


def test_a_read_over_the_bound_is_refused_before_it_is_made(root: Path) -> None:
    big = root / "big"
    with big.open("wb") as sparse:
        sparse.truncate(MAX_READ_BYTES + 1)
    with pytest.raises(GatewayError, match="over the limit"):
        read_bytes(root, "big", 0, None)
    assert len(read_bytes(root, "big", 0, 10)) == 10
    assert len(read_bytes(root, "big", MAX_READ_BYTES, None)) == 1


def test_a_directory_lists_sorted_entries_with_their_kinds(root: Path) -> None:
    entries = list_directory(root, "dirlink")
    assert [entry.name for entry in entries] == ["climb", "secret"]
    assert entries[0] == DirEntry("climb", "symlink", 0o777, linkname="../../outside/secret")
    assert entries[1].kind == "file" and entries[1].size == len("result's own\n")
    top = {entry.name: entry.kind for entry in list_directory(root, "/")}
    assert top == {
        "absolute": "symlink",
        "dirlink": "symlink",
        "etc": "dir",
        "go.mod": "file",
        "loop": "symlink",
    }
    with pytest.raises(GatewayError, match=r"read_dir go\.mod"):
        list_directory(root, "go.mod")
