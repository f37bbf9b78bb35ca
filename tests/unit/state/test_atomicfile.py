"""A file written atomically is the old one or the new one, never a part, and a failed
write leaves no temporary file behind."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from lazybuild.state.atomicfile import write_atomic
from lazybuild.state.processes import ProcessId


def test_replaces_the_file_whole(tmp_path: Path) -> None:
    path = tmp_path / "deep" / "record.json"
    write_atomic(path, b"first")
    write_atomic(path, b"second", durable=True)
    assert path.read_bytes() == b"second"
    assert sorted(p.name for p in path.parent.iterdir()) == ["record.json"]


def test_staging_dir_holds_the_temporary_file(tmp_path: Path) -> None:
    staging = tmp_path / "staging"
    seen: list[list[str]] = []
    real_replace = os.replace

    def watching(src: str, dst: str) -> None:
        seen.append(sorted(p.name for p in staging.iterdir()))
        real_replace(src, dst)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(os, "replace", watching)
        write_atomic(tmp_path / "out" / "blob.json", b"{}", staging_dir=staging)
    assert len(seen) == 1 and len(seen[0]) == 1
    # Named after its owner: a staging cleanup by another process leaves it alone.
    assert seen[0][0].startswith(f"{ProcessId.current().tag}-blob.json.")
    assert list(staging.iterdir()) == []
    assert (tmp_path / "out" / "blob.json").read_bytes() == b"{}"


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path: Path) -> None:
    path = tmp_path / "record.json"
    path.write_bytes(b"old")

    def failing(src: str, dst: str) -> None:
        raise OSError(28, "No space left on device")

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(os, "replace", failing)
        with pytest.raises(OSError, match="No space left"):
            write_atomic(path, b"new")
    assert path.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["record.json"]
