"""The extractor against hostile archives: whatever the entries say, nothing outside
the extraction root changes (a canary tree checks it), the last entry for a path wins,
and directory attributes land only on the directory their entry made."""

from __future__ import annotations

import io
import os
import stat
import subprocess
import tarfile
from pathlib import Path

import pytest

from lazybuild.errors import FormatError
from lazybuild.untar.extract import Policy, archive_policy, extract, layer_policy
from tests.unit.untar.hostile import (
    Canary,
    hostile_attributes,
    member,
    swap_parent_for_symlink,
    tar_bytes,
)

LAYER = layer_policy(frozenset({"stargz.index.json"}))
ARCHIVE = archive_policy(None)
POLICIES = [pytest.param(LAYER, id="layer"), pytest.param(ARCHIVE, id="archive")]


@pytest.fixture
def canary(tmp_path: Path) -> Canary:
    return Canary.plant(tmp_path / "outside")


@pytest.fixture
def dest(tmp_path: Path) -> Path:
    path = tmp_path / "root"
    path.mkdir()
    return path


def run(data: bytes, dest: Path, policy: Policy) -> None:
    extract(io.BytesIO(data), dest, policy, "test layer")


@pytest.mark.parametrize("policy", POLICIES)
def test_a_parent_swapped_for_a_symlink_never_redirects_directory_attributes(
    policy: Policy, dest: Path, canary: Canary
) -> None:
    run(swap_parent_for_symlink(canary.root), dest, policy)
    canary.assert_untouched()
    assert os.readlink(dest / "a") == str(canary.root)


@pytest.mark.parametrize("policy", POLICIES)
def test_a_symlink_to_the_root_gives_the_root_no_attributes_of_a_deeper_entry(
    policy: Policy, dest: Path, canary: Canary
) -> None:
    data = tar_bytes(
        (member("a/", tarfile.DIRTYPE), b""),
        (hostile_attributes("a/"), b""),
        (member("a", tarfile.SYMTYPE, linkname="/"), b""),
    )
    run(data, dest, policy)
    after = dest.stat()
    assert stat.S_IMODE(after.st_mode) != 0o777
    assert after.st_mtime != 12345
    assert "user.hostile" not in os.listxattr(dest)
    canary.assert_untouched()


def test_layer_entries_through_a_symlink_are_refused(dest: Path, canary: Canary) -> None:
    link = (member("l", tarfile.SYMTYPE, linkname=str(canary.root)), b"")
    cases = [
        tar_bytes(link, (member("l/victim/file"), b"overwritten")),
        tar_bytes(link, (member("l/new"), b"planted")),
        tar_bytes(link, (member("l/.wh.victim"), b"")),
        tar_bytes(link, (member("l/victim/.wh..wh..opq"), b"")),
        tar_bytes(link, (member("h", tarfile.LNKTYPE, linkname="l/victim/file"), b"")),
        tar_bytes(link, (hostile_attributes("l/victim/"), b"")),
    ]
    for data in cases:
        with pytest.raises(FormatError, match="test layer: entry"):
            run(data, dest, LAYER)
        canary.assert_untouched()


def test_archive_symlinks_resolve_inside_the_root(dest: Path, canary: Canary) -> None:
    data = tar_bytes(
        (member("l", tarfile.SYMTYPE, linkname=str(canary.root)), b""),
        (member("l/victim/file"), b"inside"),
        (member("rel", tarfile.SYMTYPE, linkname="../../../.."), b""),
        (member("rel/escaped"), b"inside too"),
        (hostile_attributes("l/victim/"), b""),
    )
    run(data, dest, ARCHIVE)
    canary.assert_untouched()
    inside = dest / str(canary.root).lstrip("/") / "victim"
    assert (inside / "file").read_bytes() == b"inside"
    assert (dest / "escaped").read_bytes() == b"inside too"
    assert stat.S_IMODE(inside.stat().st_mode) == 0o777


def test_archive_hardlinks_never_reach_outside(dest: Path, canary: Canary) -> None:
    data = tar_bytes(
        (member("l", tarfile.SYMTYPE, linkname=str(canary.root)), b""),
        (member("h", tarfile.LNKTYPE, linkname="l/victim/file"), b""),
    )
    with pytest.raises(FormatError, match="hardlink to missing"):
        run(data, dest, ARCHIVE)
    canary.assert_untouched()


def test_archive_symlink_loops_end_in_an_error(dest: Path) -> None:
    data = tar_bytes(
        (member("a", tarfile.SYMTYPE, linkname="b"), b""),
        (member("b", tarfile.SYMTYPE, linkname="a"), b""),
        (member("a/file"), b"x"),
    )
    with pytest.raises(FormatError, match="too many levels of symbolic links"):
        run(data, dest, ARCHIVE)


@pytest.mark.parametrize("policy", POLICIES)
@pytest.mark.parametrize("name", ["../escape", "a/../../escape", "/../escape"])
def test_names_climbing_out_are_refused(
    policy: Policy, name: str, dest: Path, tmp_path: Path
) -> None:
    with pytest.raises(FormatError, match="outside the extraction root"):
        run(tar_bytes((member(name), b"x")), dest, policy)
    assert not (tmp_path / "escape").exists()


@pytest.mark.parametrize("policy", POLICIES)
def test_the_last_directory_entry_wins(policy: Policy, dest: Path) -> None:
    data = tar_bytes(
        (member("d/", tarfile.DIRTYPE, mode=0o700, mtime=111), b""),
        (member("d/f"), b"x"),
        (member("d/", tarfile.DIRTYPE, mode=0o751, mtime=222), b""),
    )
    run(data, dest, policy)
    st = (dest / "d").stat()
    assert (stat.S_IMODE(st.st_mode), st.st_mtime) == (0o751, 222)


@pytest.mark.parametrize("policy", POLICIES)
def test_a_directory_replaced_by_a_file_hands_it_nothing(policy: Policy, dest: Path) -> None:
    data = tar_bytes(
        (member("d/", tarfile.DIRTYPE, mode=0o711, mtime=111), b""),
        (member("d/sub/", tarfile.DIRTYPE, mode=0o700, mtime=111), b""),
        (member("d", mode=0o640, mtime=222), b"file now"),
    )
    run(data, dest, policy)
    st = (dest / "d").lstat()
    assert stat.S_ISREG(st.st_mode)
    assert (stat.S_IMODE(st.st_mode), st.st_mtime) == (0o640, 222)


@pytest.mark.parametrize("policy", POLICIES)
def test_a_directory_replaced_and_made_again_gets_only_the_new_entrys_attributes(
    policy: Policy, dest: Path
) -> None:
    data = tar_bytes(
        (member("d/", tarfile.DIRTYPE, mode=0o711, mtime=111), b""),
        (member("d/sub/", tarfile.DIRTYPE, mode=0o700, mtime=111), b""),
        (member("d", mode=0o640), b"file for a while"),
        (member("d/", tarfile.DIRTYPE, mode=0o750), b""),
        (member("d/sub/f"), b"x"),  # d/sub made again as a plain parent
    )
    run(data, dest, policy)
    assert stat.S_IMODE((dest / "d").stat().st_mode) == 0o750
    assert stat.S_IMODE((dest / "d" / "sub").stat().st_mode) == 0o755


def test_layer_whiteouts_and_root_artefacts(dest: Path) -> None:
    data = tar_bytes(
        (member("d/", tarfile.DIRTYPE), b""),
        (member("d/gone"), b"x"),
        (member("d/.wh.gone"), b""),
        (member("stargz.index.json"), b"{}"),
    )
    run(data, dest, LAYER)
    st = (dest / "d" / "gone").lstat()
    assert stat.S_ISCHR(st.st_mode) and st.st_rdev == 0
    assert not (dest / "stargz.index.json").exists()


def test_sparse_members_keep_their_holes(tmp_path: Path, dest: Path) -> None:
    source = tmp_path / "src"
    source.mkdir()
    sparse = source / "sparse"
    with sparse.open("wb") as out:
        out.truncate(1 << 30)
        out.seek(5 << 20)
        out.write(b"middle")
        out.seek((1 << 30) - 3)
        out.write(b"end")
    for fmt in ("gnu", "posix"):
        archive = tmp_path / f"{fmt}.tar"
        subprocess.run(
            ["tar", "--sparse", f"--format={fmt}", "-cf", archive, "-C", source, "sparse"],
            check=True,
        )
        assert archive.stat().st_size < 64 << 10
        target = dest / fmt
        target.mkdir()
        with archive.open("rb") as stream:
            extract(stream, target, LAYER, "sparse")
        extracted = target / "sparse"
        assert extracted.stat().st_size == 1 << 30
        assert extracted.stat().st_blocks * 512 < 1 << 20, f"{fmt}: holes were written out"
        with extracted.open("rb") as data:
            data.seek(5 << 20)
            assert data.read(6) == b"middle"
            data.seek((1 << 30) - 3)
            assert data.read() == b"end"
            data.seek(1 << 20)
            assert data.read(16) == bytes(16)
