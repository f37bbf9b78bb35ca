"""File actions on a root filesystem: Copy (COPY/ADD), Mkdir, Mkfile, Rm.

Owners other than the test's own need root: those tests live in
tests/integration/test_fileactions_root.py.
"""

from __future__ import annotations

import gzip
import io
import os
import re
import stat
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import zstandard

from lazybuild.graph.ops import ChownOpt, Copy, FileAction, Mkdir, Mkfile, Rm
from lazybuild.worker.archive import is_tar_archive
from lazybuild.worker.fileactions import FileActionError, Owner, apply_actions, resolve_owner

SOURCE_MTIME_NS = 1_600_000_000_123_456_789  # nanoseconds that must survive a copy
EPOCH = 1_700_000_000  # a Copy/Mkdir/Mkfile timestamp, in seconds
EPOCH_NS = EPOCH * 1_000_000_000


# -- helpers -----------------------------------------------------------------------------


@pytest.fixture
def src(tmp_path: Path) -> Path:
    root = tmp_path / "src"
    root.mkdir()
    return root


@pytest.fixture
def dest(tmp_path: Path) -> Path:
    root = tmp_path / "dest"
    root.mkdir()
    return root


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    """A host directory beside the roots that no action may ever touch."""
    directory = tmp_path / "outside"
    directory.mkdir()
    (directory / "secret").write_text("host")
    return directory


@pytest.fixture
def umask_077() -> Iterator[None]:
    """A strict umask, to show modes are applied exactly, not masked."""
    old = os.umask(0o077)
    try:
        yield
    finally:
        os.umask(old)


def write(root: Path, rel: str, data: str | bytes = "", mode: int = 0o644) -> Path:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data.encode() if isinstance(data, str) else data)
    os.chmod(path, mode)
    return path


def copy(dest_root: Path, source_root: Path | None, /, **fields: Any) -> None:
    apply_actions([Copy(src_input=0, **fields)], dest_root=dest_root, sources=[source_root])


def apply(dest: Path, *actions: FileAction) -> None:
    apply_actions(actions, dest_root=dest, sources=[])


def mode_of(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


def mtime_of(path: Path) -> int:
    return os.lstat(path).st_mtime_ns


def tar_bytes(*entries: tuple[tarfile.TarInfo, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as archive:
        for info, data in entries:
            info.size = len(data) if info.isreg() else 0
            archive.addfile(info, io.BytesIO(data) if info.isreg() else None)
    return buffer.getvalue()


def entry(name: str, kind: bytes = tarfile.REGTYPE, **fields: Any) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.uid, info.gid = os.getuid(), os.getgid()
    info.mode = 0o755 if kind == tarfile.DIRTYPE else 0o644
    info.mtime = 1_500_000_000
    for key, value in fields.items():
        setattr(info, key, value)
    return info


def compress(data: bytes, compression: str) -> bytes:
    if compression == "gz":
        return gzip.compress(data)
    if compression == "bz2":
        import bz2

        return bz2.compress(data)
    if compression == "xz":
        import lzma

        return lzma.compress(data)
    if compression == "zst":
        return zstandard.ZstdCompressor().compress(data)
    return data


def add(dest_root: Path, source_root: Path, source: str, target: str, **fields: Any) -> None:
    """ADD of a local file, as the Dockerfile frontend asks for it."""
    copy(
        dest_root,
        source_root,
        src=source,
        dest=target,
        follow_symlinks=True,
        dir_copy_contents=True,
        attempt_unpack_docker_compatibility=True,
        create_dest_path=True,
        allow_wildcard=True,
        allow_empty_wildcard=True,
        **fields,
    )


# -- owners ------------------------------------------------------------------------------


@pytest.fixture
def etc_root(tmp_path: Path) -> Path:
    root = tmp_path / "image"
    write(root, "etc/passwd", "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1001::/home/app:/bin/sh\n")
    write(root, "etc/group", "root:x:0:\napp:x:1001:\nstaff:x:50:app\n")
    return root


def test_no_chown_is_no_owner(etc_root: Path) -> None:
    assert resolve_owner(None, etc_root) is None


def test_numeric_user_alone_uses_the_same_gid(etc_root: Path) -> None:
    assert resolve_owner(ChownOpt("1234"), etc_root) == Owner(1234, 1234)
    # Even when /etc/passwd knows the uid: BuildKit takes numbers as they are.
    assert resolve_owner(ChownOpt("1000"), etc_root) == Owner(1000, 1000)


def test_user_name_alone_uses_its_primary_group(etc_root: Path) -> None:
    assert resolve_owner(ChownOpt("app"), etc_root) == Owner(1000, 1001)


@pytest.mark.parametrize(
    ("chown", "owner"),
    [
        (ChownOpt("app", "staff"), Owner(1000, 50)),
        (ChownOpt("7", "staff"), Owner(7, 50)),
        (ChownOpt("app", "99"), Owner(1000, 99)),
        (ChownOpt("", "staff"), Owner(0, 50)),
    ],
)
def test_user_and_group_mix_names_and_numbers(
    etc_root: Path, chown: ChownOpt, owner: Owner
) -> None:
    assert resolve_owner(chown, etc_root) == owner


def test_unknown_user_names_passwd_and_the_name(etc_root: Path) -> None:
    with pytest.raises(FileActionError, match=r"user 'ghost' not found in /etc/passwd"):
        resolve_owner(ChownOpt("ghost"), etc_root)


def test_unknown_group_names_group_file_and_the_name(etc_root: Path) -> None:
    with pytest.raises(FileActionError, match=r"group 'ghosts' not found in /etc/group"):
        resolve_owner(ChownOpt("app", "ghosts"), etc_root)


def test_out_of_range_id_is_an_error(etc_root: Path) -> None:
    with pytest.raises(FileActionError, match="out of range"):
        resolve_owner(ChownOpt("4294967296"), etc_root)


def test_names_are_looked_up_in_the_root_never_the_host(tmp_path: Path) -> None:
    root = tmp_path / "image"
    write(root, "real/passwd", "svc:x:42:43::/:/bin/sh\n")
    (root / "etc").symlink_to("/real")  # absolute: means <root>/real
    assert resolve_owner(ChownOpt("svc"), root) == Owner(42, 43)
    with pytest.raises(FileActionError, match="'root' not found"):
        resolve_owner(ChownOpt("root"), tmp_path / "empty")


# -- Copy: where things go ---------------------------------------------------------------


def test_file_copied_to_exact_path_with_parents_made(src: Path, dest: Path) -> None:
    write(src, "a.txt", "A", 0o640)
    copy(dest, src, src="/a.txt", dest="/x/y/b.txt", create_dest_path=True)
    assert (dest / "x/y/b.txt").read_text() == "A"
    assert mode_of(dest / "x/y/b.txt") == 0o640
    assert mode_of(dest / "x") == mode_of(dest / "x/y") == 0o755


def test_dest_ending_in_slash_is_a_directory(src: Path, dest: Path) -> None:
    write(src, "a.txt", "A")
    copy(dest, src, src="/a.txt", dest="/out/", create_dest_path=True)
    assert (dest / "out/a.txt").read_text() == "A"


def test_file_goes_into_an_existing_directory(src: Path, dest: Path) -> None:
    write(src, "a.txt", "A")
    (dest / "out").mkdir()
    copy(dest, src, src="/a.txt", dest="/out")
    assert (dest / "out/a.txt").read_text() == "A"


def test_file_replaces_an_existing_file(src: Path, dest: Path) -> None:
    write(src, "a.txt", "new", 0o600)
    write(dest, "a.txt", "old", 0o777)
    copy(dest, src, src="/a.txt", dest="/a.txt")
    assert (dest / "a.txt").read_text() == "new"
    assert mode_of(dest / "a.txt") == 0o600


def test_missing_literal_source_is_an_error(src: Path, dest: Path) -> None:
    with pytest.raises(FileActionError, match=r"^COPY source not found: /missing.txt$"):
        copy(dest, src, src="/missing.txt", dest="/out/", create_dest_path=True)


def test_missing_dest_parent_is_an_error_without_create_dest_path(src: Path, dest: Path) -> None:
    write(src, "a.txt", "A")
    with pytest.raises(FileActionError, match="destination directory /nope does not exist"):
        copy(dest, src, src="/a.txt", dest="/nope/a.txt")
    assert not (dest / "nope").exists()
    copy(dest, src, src="/a.txt", dest="/a.txt")
    assert (dest / "a.txt").read_text() == "A"


def test_directory_contents_merge_into_dest(src: Path, dest: Path) -> None:
    write(src, "dir/a", "a")
    write(src, "dir/sub/b", "b")
    write(dest, "out/keep", "k")
    write(dest, "out/sub/c", "c")
    copy(dest, src, src="/dir", dest="/out/", dir_copy_contents=True)
    found = sorted(p.relative_to(dest / "out").as_posix() for p in (dest / "out").rglob("*"))
    assert found == ["a", "keep", "sub", "sub/b", "sub/c"]


def test_directory_itself_goes_into_an_existing_dest(src: Path, dest: Path) -> None:
    write(src, "dir/a", "a")
    (dest / "out").mkdir()
    copy(dest, src, src="/dir", dest="/out")
    assert (dest / "out/dir/a").read_text() == "a"


def test_directory_to_a_new_path_is_a_copy_of_it(src: Path, dest: Path) -> None:
    write(src, "dir/a", "a")
    os.chmod(src / "dir", 0o750)
    os.utime(src / "dir", ns=(SOURCE_MTIME_NS, SOURCE_MTIME_NS))
    copy(dest, src, src="/dir", dest="/new")
    assert (dest / "new/a").read_text() == "a"
    assert mode_of(dest / "new") == 0o750
    assert mtime_of(dest / "new") == SOURCE_MTIME_NS


def test_contents_into_a_new_dest_make_it_0755_with_the_sources_times(
    src: Path, dest: Path
) -> None:
    write(src, "dir/a", "a")
    os.chmod(src / "dir", 0o700)
    os.utime(src / "dir", ns=(SOURCE_MTIME_NS, SOURCE_MTIME_NS))
    copy(dest, src, src="/dir", dest="/new/", dir_copy_contents=True)
    assert (dest / "new/a").read_text() == "a"
    assert mode_of(dest / "new") == 0o755  # fsutil: made as a parent, not copied
    assert mtime_of(dest / "new") == SOURCE_MTIME_NS


def test_existing_top_dest_keeps_its_mode(src: Path, dest: Path) -> None:
    write(src, "dir/a", "a")
    os.chmod(src / "dir", 0o700)
    (dest / "out").mkdir(mode=0o711)
    os.chmod(dest / "out", 0o711)
    copy(dest, src, src="/dir", dest="/out/", dir_copy_contents=True)
    assert mode_of(dest / "out") == 0o711


def test_whole_root_contents(src: Path, dest: Path) -> None:
    write(src, "a", "a")
    write(src, "d/b", "b")
    copy(dest, src, src="/", dest="/", dir_copy_contents=True)
    assert (dest / "a").read_text() == "a"
    assert (dest / "d/b").read_text() == "b"


# -- Copy: wildcards ---------------------------------------------------------------------


def test_wildcard_copies_only_the_matches(src: Path, dest: Path) -> None:
    for name in ("a.txt", "b.txt", "c.md"):
        write(src, name, name)
    copy(dest, src, src="/*.txt", dest="/out/", allow_wildcard=True, create_dest_path=True)
    assert sorted(os.listdir(dest / "out")) == ["a.txt", "b.txt"]


def test_wildcard_in_a_middle_component(src: Path, dest: Path) -> None:
    write(src, "d1/one.txt", "1")
    write(src, "d2/two.txt", "2")
    write(src, "e/three.txt", "3")
    copy(dest, src, src="/d*/*.txt", dest="/out/", allow_wildcard=True, create_dest_path=True)
    assert sorted(os.listdir(dest / "out")) == ["one.txt", "two.txt"]


def test_several_matches_make_dest_a_directory(src: Path, dest: Path) -> None:
    write(src, "a.txt", "a")
    write(src, "b.txt", "b")
    copy(dest, src, src="/*.txt", dest="/out", allow_wildcard=True, create_dest_path=True)
    assert sorted(os.listdir(dest / "out")) == ["a.txt", "b.txt"]


def test_single_match_is_copied_to_exact_dest(src: Path, dest: Path) -> None:
    write(src, "app.conf", "c")
    copy(dest, src, src="/app.*", dest="/etc.conf", allow_wildcard=True, create_dest_path=True)
    assert (dest / "etc.conf").read_text() == "c"


def test_wildcard_without_match_is_an_error_unless_allowed(src: Path, dest: Path) -> None:
    with pytest.raises(FileActionError, match=r"COPY source not found: nothing matches /\*.txt"):
        copy(dest, src, src="/*.txt", dest="/out/", allow_wildcard=True, create_dest_path=True)
    copy(
        dest,
        src,
        src="/*.txt",
        dest="/out/",
        allow_wildcard=True,
        allow_empty_wildcard=True,
        create_dest_path=True,
    )
    assert not (dest / "out").exists()


def test_wildcard_classes_and_escapes_follow_go(src: Path, dest: Path) -> None:
    for name in ("a.txt", "b.txt", "c.txt", "*.txt"):
        write(src, name, name)
    copy(dest, src, src="/[ab].txt", dest="/x/", allow_wildcard=True, create_dest_path=True)
    assert sorted(os.listdir(dest / "x")) == ["a.txt", "b.txt"]
    copy(dest, src, src="/\\*[.]txt", dest="/y/", allow_wildcard=True, create_dest_path=True)
    assert os.listdir(dest / "y") == ["*.txt"]


def test_wildcard_is_literal_without_allow_wildcard(src: Path, dest: Path) -> None:
    write(src, "a.txt", "a")
    with pytest.raises(FileActionError, match=r"not found: /\*.txt"):
        copy(dest, src, src="/*.txt", dest="/out/", create_dest_path=True)


def test_wildcards_do_not_enter_symlinked_directories(src: Path, dest: Path) -> None:
    write(src, "real/x.txt", "x")
    (src / "link").symlink_to("real")
    with pytest.raises(FileActionError, match="nothing matches"):
        copy(dest, src, src="/l*/x.txt", dest="/out/", allow_wildcard=True)


def test_wildcard_base_symlink_is_followed_only_with_follow_symlinks(src: Path, dest: Path) -> None:
    write(src, "real/x.txt", "x")
    (src / "base").symlink_to("/real")
    with pytest.raises(FileActionError, match="nothing matches"):
        copy(dest, src, src="/base/*.txt", dest="/out/", allow_wildcard=True)
    copy(dest, src, src="/base/*.txt", dest="/out/", allow_wildcard=True, follow_symlinks=True)
    assert (dest / "out/x.txt").read_text() == "x"


# -- Copy: symlinks and containment ------------------------------------------------------


def test_symlink_source_is_copied_as_a_link(src: Path, dest: Path) -> None:
    write(src, "a.txt", "A")
    (src / "link").symlink_to("a.txt")
    copy(dest, src, src="/link", dest="/out/", create_dest_path=True)
    assert os.readlink(dest / "out/link") == "a.txt"


def test_followed_symlink_source_copies_the_target_under_the_links_name(
    src: Path, dest: Path
) -> None:
    write(src, "a.txt", "A")
    (src / "link").symlink_to("/a.txt")
    copy(dest, src, src="/link", dest="/out/", create_dest_path=True, follow_symlinks=True)
    assert not (dest / "out/link").is_symlink()
    assert (dest / "out/link").read_text() == "A"


def test_symlinks_inside_a_tree_stay_links_with_their_targets(src: Path, dest: Path) -> None:
    (src / "dir").mkdir()
    (src / "dir/abs").symlink_to("/etc/passwd")
    (src / "dir/dangling").symlink_to("../nowhere")
    copy(dest, src, src="/dir", dest="/out")
    assert os.readlink(dest / "out/abs") == "/etc/passwd"
    assert os.readlink(dest / "out/dangling") == "../nowhere"


@pytest.mark.parametrize("target", ["/../outside/secret", "../../outside/secret"])
def test_source_symlinks_cannot_reach_the_host(
    src: Path, dest: Path, outside: Path, target: str
) -> None:
    (src / "evil").symlink_to(target)
    with pytest.raises(FileActionError, match="not found: /evil"):
        copy(dest, src, src="/evil", dest="/out/", create_dest_path=True, follow_symlinks=True)
    assert not (dest / "out/evil").exists()


def test_dest_symlinks_resolve_inside_the_root(src: Path, dest: Path, tmp_path: Path) -> None:
    write(src, "passwd", "mine")
    (dest / "etc").symlink_to("/../../host")
    copy(dest, src, src="/passwd", dest="/etc/passwd", create_dest_path=True)
    assert (dest / "host/passwd").read_text() == "mine"
    assert not (tmp_path / "host").exists()


def test_final_dest_symlink_is_followed_inside_the_root(
    src: Path, dest: Path, outside: Path
) -> None:
    # As BuildKit: the named destination resolves fully, so this writes <root>/outside/secret.
    write(src, "a.txt", "A")
    (dest / "link").symlink_to("/../../outside/secret")
    copy(dest, src, src="/a.txt", dest="/link", create_dest_path=True)
    assert (dest / "outside/secret").read_text() == "A"
    assert (outside / "secret").read_text() == "host"


def test_symlinked_directory_inside_dest_is_never_entered(
    src: Path, dest: Path, outside: Path
) -> None:
    write(src, "app/lib/evil.so", "x")
    (dest / "app").mkdir()
    (dest / "app/lib").symlink_to(outside)  # even a host-absolute target
    with pytest.raises(FileActionError, match="/app/lib: a non-directory is in the way"):
        copy(dest, src, src="/app", dest="/app", dir_copy_contents=True)
    assert sorted(os.listdir(outside)) == ["secret"]
    copy(dest, src, src="/app", dest="/app", dir_copy_contents=True, always_replace_existing=True)
    assert (dest / "app/lib/evil.so").read_text() == "x"
    assert sorted(os.listdir(outside)) == ["secret"]


# -- Copy: metadata ----------------------------------------------------------------------


def test_modes_times_and_xattrs_are_kept(src: Path, dest: Path) -> None:
    tool = write(src, "dir/bin/tool", "#!", 0o4751)
    os.setxattr(tool, "user.origin", b"test")
    os.utime(tool, ns=(SOURCE_MTIME_NS, SOURCE_MTIME_NS))
    os.chmod(src / "dir/bin", 0o750)
    os.setxattr(src / "dir/bin", "user.dir", b"d")
    os.utime(src / "dir/bin", ns=(SOURCE_MTIME_NS - 5, SOURCE_MTIME_NS - 5))
    copy(dest, src, src="/dir", dest="/out")
    copied = dest / "out/bin/tool"
    assert mode_of(copied) == 0o4751
    assert mtime_of(copied) == SOURCE_MTIME_NS
    assert os.getxattr(copied, "user.origin") == b"test"
    assert mode_of(dest / "out/bin") == 0o750
    assert os.getxattr(dest / "out/bin", "user.dir") == b"d"
    # Set after its entries were written, so the source's time survives.
    assert mtime_of(dest / "out/bin") == SOURCE_MTIME_NS - 5


def test_overlayfs_bookkeeping_xattrs_are_not_copied(src: Path, dest: Path) -> None:
    f = write(src, "f", "x")
    os.setxattr(f, "user.overlay.opaque", b"y")
    os.setxattr(f, "user.kept", b"k")
    copy(dest, src, src="/f", dest="/f")
    assert os.listxattr(dest / "f") == ["user.kept"]


def test_hard_links_stay_links(src: Path, dest: Path) -> None:
    first = write(src, "dir/a", "same")
    os.link(first, src / "dir/b")
    (src / "dir/sub").mkdir()
    os.link(first, src / "dir/sub/c")
    copy(dest, src, src="/dir", dest="/out")
    inodes = {os.lstat(dest / "out" / name).st_ino for name in ("a", "b", "sub/c")}
    assert len(inodes) == 1
    assert os.lstat(dest / "out/a").st_nlink == 3


def test_fifos_and_sockets_are_recreated(src: Path, dest: Path) -> None:
    (src / "dir").mkdir()
    os.mkfifo(src / "dir/pipe", 0o640)
    os.mknod(src / "dir/sock", stat.S_IFSOCK | 0o600)
    copy(dest, src, src="/dir", dest="/out")
    assert stat.S_ISFIFO(os.lstat(dest / "out/pipe").st_mode)
    assert mode_of(dest / "out/pipe") == 0o640
    assert stat.S_ISSOCK(os.lstat(dest / "out/sock").st_mode)


@pytest.mark.skipif(os.geteuid() != 0, reason="mknod of a device needs root")
def test_devices_are_recreated(src: Path, dest: Path) -> None:
    os.mknod(src / "null", stat.S_IFCHR | 0o666, os.makedev(1, 3))
    copy(dest, src, src="/null", dest="/dev/null", create_dest_path=True)
    st = os.lstat(dest / "dev/null")
    assert stat.S_ISCHR(st.st_mode)
    assert (os.major(st.st_rdev), os.minor(st.st_rdev)) == (1, 3)


# -- Copy: chmod and timestamp -----------------------------------------------------------


def test_octal_chmod_applies_to_every_copied_entry(src: Path, dest: Path) -> None:
    write(src, "dir/sub/f", "f", 0o600)
    copy(dest, src, src="/dir", dest="/made/out", chmod="751", create_dest_path=True)
    for rel in ("made/out", "made/out/sub", "made/out/sub/f"):
        assert mode_of(dest / rel) == 0o751
    # Directories the copy makes on the way take the mode too (fsutil#228, BuildKit#4945).
    assert mode_of(dest / "made") == 0o751


def test_octal_chmod_keeps_special_bits(src: Path, dest: Path) -> None:
    write(src, "tool", "x", 0o644)
    copy(dest, src, src="/tool", dest="/tool", chmod="4755")
    assert mode_of(dest / "tool") == 0o4755


@pytest.mark.parametrize(
    ("chmod", "file_mode", "expected"),
    [
        ("u+x,go-w", 0o666, 0o744),
        ("a=rX", 0o600, 0o444),
        ("a=rX", 0o700, 0o555),
        ("+x", 0o600, 0o711),
        ("g=u", 0o640, None),  # not supported: copying from another class
    ],
)
def test_symbolic_chmod(
    src: Path, dest: Path, chmod: str, file_mode: int, expected: int | None
) -> None:
    write(src, "f", "x", file_mode)
    if expected is None:
        with pytest.raises(FileActionError, match="invalid chmod"):
            copy(dest, src, src="/f", dest="/f", chmod=chmod)
        return
    copy(dest, src, src="/f", dest="/f", chmod=chmod)
    assert mode_of(dest / "f") == expected


def test_symbolic_capital_x_makes_directories_searchable(src: Path, dest: Path) -> None:
    write(src, "dir/f", "x", 0o600)
    os.chmod(src / "dir", 0o700)
    copy(dest, src, src="/dir", dest="/out", chmod="go+rX")
    assert mode_of(dest / "out") == 0o755
    assert mode_of(dest / "out/f") == 0o644


@pytest.mark.parametrize("chmod", ["abc", "999", "75555", "u+q", ""])
def test_invalid_chmod_is_an_error(src: Path, dest: Path, chmod: str) -> None:
    write(src, "f", "x")
    with pytest.raises(FileActionError, match=re.escape(f"invalid chmod '{chmod}'")):
        copy(dest, src, src="/f", dest="/f", chmod=chmod)


def test_chmod_leaves_symlinks_alone(src: Path, dest: Path) -> None:
    write(src, "dir/target", "t", 0o600)
    (src / "dir/link").symlink_to("target")
    copy(dest, src, src="/dir", dest="/out", chmod="640")
    assert os.readlink(dest / "out/link") == "target"
    assert mode_of(dest / "out/target") == 0o640


def test_timestamp_sets_every_copied_and_made_mtime(src: Path, dest: Path) -> None:
    write(src, "dir/sub/f", "f")
    (src / "dir/link").symlink_to("sub/f")
    copy(dest, src, src="/dir", dest="/a/b/", timestamp=EPOCH, create_dest_path=True)
    for rel in ("a", "a/b", "a/b/dir", "a/b/dir/sub", "a/b/dir/sub/f", "a/b/dir/link"):
        assert mtime_of(dest / rel) == EPOCH_NS, rel


# -- Copy: include and exclude patterns --------------------------------------------------


@pytest.fixture
def app_tree(src: Path) -> Path:
    write(src, "app/x/keep.txt", "k")
    write(src, "app/x/drop.md", "d")
    write(src, "app/y/drop.md", "d")
    write(src, "app/y/keep.md", "k")
    write(src, "app/top.txt", "t")
    os.chmod(src / "app/x", 0o750)
    return src


def listing(root: Path) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*"))


def test_include_patterns_take_matches_and_make_their_parents(app_tree: Path, dest: Path) -> None:
    copy(
        dest,
        app_tree,
        src="/app",
        dest="/out/",
        dir_copy_contents=True,
        create_dest_path=True,
        include_patterns=("x/*.txt",),
    )
    assert listing(dest / "out") == ["x", "x/keep.txt"]
    assert mode_of(dest / "out/x") == 0o750  # made with the source directory's metadata


def test_include_pattern_naming_a_directory_takes_all_below(app_tree: Path, dest: Path) -> None:
    copy(dest, app_tree, src="/app", dest="/out/", dir_copy_contents=True, include_patterns=("x",))
    assert listing(dest / "out") == ["x", "x/drop.md", "x/keep.txt"]


def test_exclude_patterns_with_an_exception(app_tree: Path, dest: Path) -> None:
    copy(
        dest,
        app_tree,
        src="/app",
        dest="/out/",
        dir_copy_contents=True,
        exclude_patterns=("**/*.md", "!y/keep.md"),
    )
    assert listing(dest / "out") == ["top.txt", "x", "x/keep.txt", "y", "y/keep.md"]


def test_excluded_directory_is_skipped(app_tree: Path, dest: Path) -> None:
    copy(dest, app_tree, src="/app", dest="/out/", dir_copy_contents=True, exclude_patterns=("y",))
    assert listing(dest / "out") == ["top.txt", "x", "x/drop.md", "x/keep.txt"]


def test_excluded_directory_is_made_for_a_re_included_entry(app_tree: Path, dest: Path) -> None:
    copy(
        dest,
        app_tree,
        src="/app",
        dest="/out/",
        dir_copy_contents=True,
        exclude_patterns=("y", "!y/keep.md"),
    )
    assert "y/keep.md" in listing(dest / "out")
    assert "y/drop.md" not in listing(dest / "out")


def test_exclusions_apply_below_each_wildcard_match(src: Path, dest: Path) -> None:
    # As fsutil (BuildKit's testExcludedFilesOnCopy): patterns are relative to each match
    # and select what is below it; the match itself is copied.
    write(src, "dir1/a.txt", "a")
    write(src, "dir1/b.md", "b")
    write(src, "dir2/c.txt", "c")
    copy(
        dest,
        src,
        src="/dir*",
        dest="/out/",
        dir_copy_contents=True,
        allow_wildcard=True,
        create_dest_path=True,
        exclude_patterns=("*.txt",),
    )
    assert listing(dest / "out") == ["b.md"]


def test_every_entry_excluded_still_makes_the_destination(src: Path, dest: Path) -> None:
    # testExcludedFilesOnCopy's builder6: ADD --exclude=* dir* /6 makes /6, empty.
    write(src, "dir1/a.png", "a")
    write(src, "dir2/sub/b.txt", "b")
    copy(
        dest,
        src,
        src="/dir*",
        dest="/6",
        dir_copy_contents=True,
        allow_wildcard=True,
        allow_empty_wildcard=True,
        create_dest_path=True,
        exclude_patterns=("*",),
    )
    assert (dest / "6").is_dir()
    assert os.listdir(dest / "6") == []


def test_parents_style_copy_keeps_the_path(src: Path, dest: Path) -> None:
    write(src, "a/b/f.txt", "f")
    write(src, "a/b/g.md", "g")
    write(src, "a/other/h.txt", "h")
    write(src, "z.txt", "z")
    copy(
        dest,
        src,
        src="/",
        dest="/out/",
        dir_copy_contents=True,
        create_dest_path=True,
        include_patterns=("a/b/*.txt",),
    )
    assert listing(dest / "out") == ["a", "a/b", "a/b/f.txt"]


def _parents_tree(src: Path) -> None:
    for path in ("a/b/c/d/foo", "a/b/c/d/e/bay", "a/b2/c/d/e/bar", "a/b/c2/d/e/baz"):
        write(src, f"test/{path}", path)
    write(src, "test/a/b/c2/d/e2/baz", "e2")


def parents_copy(dest: Path, src: Path, source: str, pattern: str, *required: str) -> None:
    copy(
        dest,
        src,
        src=source,
        dest="/out/",
        follow_symlinks=True,
        dir_copy_contents=True,
        create_dest_path=True,
        allow_wildcard=True,
        allow_empty_wildcard=True,
        include_patterns=(pattern,),
        required_paths=required,
    )


def test_parents_copy_with_a_wildcard_before_the_pivot(src: Path, dest: Path) -> None:
    # BuildKit's testCopyRelativeParents ("doublewildcard", "doubleinputs"): every match
    # of the source's wildcard contributes what the pattern selects below it.
    _parents_tree(src)
    parents_copy(dest, src, "/test/a/b*", "c/**/e")
    assert listing(dest / "out") == ["c", "c/d", "c/d/e", "c/d/e/bar", "c/d/e/bay"]
    parents_copy(dest, src, "/test/a/b/c*", "d/**/baz")
    assert [p for p in listing(dest / "out") if p.startswith("d")] == [
        "d",
        "d/e",
        "d/e/baz",
        "d/e2",
        "d/e2/baz",
    ]


def test_parents_copy_required_path_must_exist(src: Path, dest: Path) -> None:
    # testCopyParentsMissingDirectory: a literal path is required, a wildcard is not.
    _parents_tree(src)
    with pytest.raises(FileActionError, match=r"^COPY source not found: /test/nonexistent$"):
        parents_copy(dest, src, "/", "test/nonexistent", "/test/nonexistent")
    parents_copy(dest, src, "/test/a", "b3*/c")
    assert listing(dest / "out") == []
    parents_copy(dest, src, "/test/a/b", "c/d", "/test/a/b/c/d")
    assert listing(dest / "out")[:3] == ["c", "c/d", "c/d/e"]


# -- Copy: what is in the way ------------------------------------------------------------


def test_file_onto_a_directory_fails_by_default(src: Path, dest: Path) -> None:
    write(src, "dir/a.txt", "file")
    write(dest, "out/a.txt/inner", "dir")
    with pytest.raises(FileActionError, match=r"cannot replace directory /out/a\.txt with a file"):
        copy(dest, src, src="/dir", dest="/out", dir_copy_contents=True)
    copy(dest, src, src="/dir", dest="/out", dir_copy_contents=True, always_replace_existing=True)
    assert (dest / "out/a.txt").read_text() == "file"


def test_directory_onto_a_file_fails_by_default(src: Path, dest: Path) -> None:
    write(src, "dir/sub/f", "f")
    write(dest, "out/sub", "a file")
    with pytest.raises(FileActionError, match="/out/sub: a non-directory is in the way"):
        copy(dest, src, src="/dir", dest="/out", dir_copy_contents=True)
    copy(dest, src, src="/dir", dest="/out", dir_copy_contents=True, always_replace_existing=True)
    assert (dest / "out/sub/f").read_text() == "f"


def test_existing_nested_directory_takes_the_sources_metadata(src: Path, dest: Path) -> None:
    write(src, "dir/sub/f", "f")
    os.chmod(src / "dir/sub", 0o750)
    (dest / "out/sub").mkdir(parents=True)
    os.chmod(dest / "out/sub", 0o700)
    copy(dest, src, src="/dir", dest="/out", dir_copy_contents=True)
    assert mode_of(dest / "out/sub") == 0o750


# -- Copy: ADD's archives ----------------------------------------------------------------


@pytest.fixture
def payload() -> bytes:
    return tar_bytes(
        (entry("d/", tarfile.DIRTYPE, mode=0o750, mtime=1_400_000_000), b""),
        (entry("d/f.txt", mode=0o640, mtime=1_500_000_001), b"inside"),
        (entry("d/l", tarfile.SYMTYPE, linkname="f.txt"), b""),
        (entry("d/h", tarfile.LNKTYPE, linkname="d/f.txt", mode=0o640, mtime=1_500_000_001), b""),
        (entry("deep/er/g"), b"g"),
    )


@pytest.mark.parametrize("compression", ["", "gz", "bz2", "xz", "zst"])
def test_add_extracts_archives_recognised_by_content(
    src: Path, dest: Path, payload: bytes, compression: str
) -> None:
    write(src, "payload.bin", compress(payload, compression))  # the name says nothing
    add(dest, src, "/payload.bin", "/out/")
    out = dest / "out"
    assert (out / "d/f.txt").read_text() == "inside"
    assert mode_of(out / "d/f.txt") == 0o640
    assert mtime_of(out / "d/f.txt") == 1_500_000_001 * 1_000_000_000
    assert os.readlink(out / "d/l") == "f.txt"
    assert os.lstat(out / "d/h").st_ino == os.lstat(out / "d/f.txt").st_ino
    assert mode_of(out / "d") == 0o750
    assert mtime_of(out / "d") == 1_400_000_000 * 1_000_000_000
    assert (out / "deep/er/g").read_text() == "g"
    assert mode_of(out / "deep") == 0o755  # not in the archive: made 0755
    assert not (out / "payload.bin").exists()


def test_add_to_a_dest_without_slash_extracts_into_it(
    src: Path, dest: Path, payload: bytes
) -> None:
    write(src, "p.tar", payload)
    add(dest, src, "/p.tar", "/opt/app")
    assert (dest / "opt/app/d/f.txt").read_text() == "inside"


def test_add_copies_files_that_are_not_archives(src: Path, dest: Path) -> None:
    write(src, "notes.tar", "just text, despite the name")
    squeezed = gzip.compress(b"plain text, not a tar")
    write(src, "data.gz", squeezed)
    add(dest, src, "/notes.tar", "/out/")
    add(dest, src, "/data.gz", "/out/")
    assert (dest / "out/notes.tar").read_text() == "just text, despite the name"
    assert (dest / "out/data.gz").read_bytes() == squeezed


def test_copy_without_unpack_keeps_the_archive(src: Path, dest: Path, payload: bytes) -> None:
    write(src, "p.tar", payload)
    copy(dest, src, src="/p.tar", dest="/out/", create_dest_path=True)
    assert (dest / "out/p.tar").read_bytes() == payload


def test_add_refuses_entries_climbing_out(src: Path, dest: Path, outside: Path) -> None:
    write(src, "evil.tar", tar_bytes((entry("a/../../escape"), b"x")))
    with pytest.raises(FileActionError, match=r"ADD /evil.tar: .*outside the extraction root"):
        add(dest, src, "/evil.tar", "/out/")
    assert not (dest / "escape").exists()
    assert not (outside.parent / "escape").exists()


@pytest.mark.parametrize("link", ["/../../outside", "../../../outside"])
def test_add_symlinks_resolve_inside_the_extraction_root(
    src: Path, dest: Path, outside: Path, link: str
) -> None:
    archive = tar_bytes(
        (entry("esc", tarfile.SYMTYPE, linkname=link), b""),
        (entry("esc/pwn"), b"pwned"),
    )
    write(src, "evil.tar", archive)
    add(dest, src, "/evil.tar", "/out/")
    assert (dest / "out/outside/pwn").read_text() == "pwned"
    assert sorted(os.listdir(outside)) == ["secret"]


def test_add_hardlink_out_of_the_root_is_refused(src: Path, dest: Path, outside: Path) -> None:
    archive = tar_bytes((entry("h", tarfile.LNKTYPE, linkname="../../outside/secret"), b""))
    write(src, "evil.tar", archive)
    with pytest.raises(FileActionError, match="outside the extraction root"):
        add(dest, src, "/evil.tar", "/out/")
    assert (outside / "secret").read_text() == "host"


def test_add_hardlink_to_a_symlink_never_changes_its_target(
    src: Path, dest: Path, outside: Path
) -> None:
    archive = tar_bytes(
        (entry("l", tarfile.SYMTYPE, linkname=str(outside / "secret")), b""),
        (entry("h", tarfile.LNKTYPE, linkname="l", mode=0o777), b""),
    )
    os.chmod(outside / "secret", 0o600)
    write(src, "evil.tar", archive)
    add(dest, src, "/evil.tar", "/out/")
    assert mode_of(outside / "secret") == 0o600


def test_add_whiteouts_are_plain_files(src: Path, dest: Path) -> None:
    write(src, "w.tar", tar_bytes((entry(".wh.gone"), b""), (entry("d/.wh..wh..opq"), b"")))
    write(dest, "out/gone", "still here")
    add(dest, src, "/w.tar", "/out/")
    assert (dest / "out/.wh.gone").is_file()
    assert (dest / "out/d/.wh..wh..opq").is_file()
    assert (dest / "out/gone").read_text() == "still here"


def test_add_later_entries_replace_earlier_ones(src: Path, dest: Path) -> None:
    archive = tar_bytes((entry("x"), b"file"), (entry("x/", tarfile.DIRTYPE), b""))
    write(src, "r.tar", archive)
    add(dest, src, "/r.tar", "/out/")
    assert (dest / "out/x").is_dir()


def test_add_damaged_archive_is_an_error(src: Path, dest: Path, payload: bytes) -> None:
    big = tar_bytes((entry("big"), b"z" * 100_000))
    write(src, "cut.tar", big[:4096])
    with pytest.raises(FileActionError, match=r"ADD /cut\.tar: .*damaged"):
        add(dest, src, "/cut.tar", "/out/")


def test_add_xattrs_from_pax_records(src: Path, dest: Path) -> None:
    info = entry("f")
    info.pax_headers = {"SCHILY.xattr.user.origin": "tar"}
    write(src, "x.tar", tar_bytes((info, b"f")))
    add(dest, src, "/x.tar", "/out/")
    assert os.getxattr(dest / "out/f", "user.origin") == b"tar"


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (tar_bytes((entry("a"), b"a")), True),
        (gzip.compress(tar_bytes((entry("a"), b"a"))), True),
        (b"", False),
        (b"hello", False),
        (b"\0" * 1024, False),  # only end-of-archive blocks: nothing to extract
        (gzip.compress(b"hello"), False),
        (b"\x1f\x8b\x08" + b"garbage" * 100, False),
    ],
)
def test_is_tar_archive(tmp_path: Path, content: bytes, *, expected: bool) -> None:
    path = write(tmp_path, "f", content)
    assert is_tar_archive(path) is expected


def test_directories_and_links_are_not_archives(tmp_path: Path) -> None:
    write(tmp_path, "a.tar", tar_bytes((entry("a"), b"a")))
    (tmp_path / "link.tar").symlink_to("a.tar")
    assert not is_tar_archive(tmp_path)
    assert not is_tar_archive(tmp_path / "link.tar")


# -- Mkdir -------------------------------------------------------------------------------


def test_mkdir_with_parents_sets_mode_and_time_on_all_it_makes(dest: Path, umask_077: None) -> None:
    apply(dest, Mkdir(path="/a/b/c", mode=0o751, make_parents=True, timestamp=EPOCH))
    for rel in ("a", "a/b", "a/b/c"):
        assert mode_of(dest / rel) == 0o751
        assert mtime_of(dest / rel) == EPOCH_NS


def test_mkdir_on_an_existing_directory_changes_nothing(dest: Path) -> None:
    (dest / "d").mkdir()
    os.chmod(dest / "d", 0o711)
    apply(dest, Mkdir(path="/d", mode=0o755, make_parents=True))
    apply(dest, Mkdir(path="/d", mode=0o755))
    assert mode_of(dest / "d") == 0o711


def test_mkdir_without_parents_needs_the_parent(dest: Path) -> None:
    with pytest.raises(FileActionError, match="mkdir /a/b: the parent directory does not exist"):
        apply(dest, Mkdir(path="/a/b"))
    apply(dest, Mkdir(path="/a"))
    apply(dest, Mkdir(path="/a/b", mode=0o700))
    assert mode_of(dest / "a/b") == 0o700


@pytest.mark.parametrize("make_parents", [False, True])
def test_mkdir_over_a_file_is_an_error(dest: Path, *, make_parents: bool) -> None:
    write(dest, "f", "x")
    with pytest.raises(FileActionError, match="/f"):
        apply(dest, Mkdir(path="/f", make_parents=make_parents))


def test_mkdir_through_a_symlink_stays_in_the_root(dest: Path, outside: Path) -> None:
    (dest / "l").symlink_to("/../../outside")
    apply(dest, Mkdir(path="/l/new", make_parents=True))
    assert (dest / "outside/new").is_dir()
    assert sorted(os.listdir(outside)) == ["secret"]


# -- Mkfile ------------------------------------------------------------------------------


def test_mkfile_writes_data_with_exact_mode_and_time(dest: Path, umask_077: None) -> None:
    apply(dest, Mkfile(path="/f", data=b"hello", mode=0o755, timestamp=EPOCH))
    assert (dest / "f").read_bytes() == b"hello"
    assert mode_of(dest / "f") == 0o755
    assert mtime_of(dest / "f") == EPOCH_NS


def test_mkfile_replaces_content_and_mode(dest: Path) -> None:
    write(dest, "f", "a much longer old content", 0o600)
    apply(dest, Mkfile(path="/f", data=b"new", mode=0o644))
    assert (dest / "f").read_bytes() == b"new"
    assert mode_of(dest / "f") == 0o644


def test_mkfile_onto_a_directory_is_an_error(dest: Path) -> None:
    (dest / "d").mkdir()
    with pytest.raises(FileActionError, match="mkfile /d: a directory is in the way"):
        apply(dest, Mkfile(path="/d", data=b""))


def test_mkfile_needs_the_parent(dest: Path) -> None:
    with pytest.raises(FileActionError, match="mkfile /no/f: the parent directory does not exist"):
        apply(dest, Mkfile(path="/no/f", data=b""))


def test_mkfile_replaces_a_fifo_instead_of_blocking(dest: Path) -> None:
    os.mkfifo(dest / "p")
    apply(dest, Mkfile(path="/p", data=b"x"))
    assert (dest / "p").read_bytes() == b"x"


def test_mkfile_through_a_symlink_stays_in_the_root(dest: Path, outside: Path) -> None:
    (dest / "outside").mkdir()
    (dest / "f").symlink_to("/../../outside/secret")
    apply(dest, Mkfile(path="/f", data=b"mine"))
    assert (dest / "outside/secret").read_bytes() == b"mine"
    assert (outside / "secret").read_text() == "host"


# -- Rm ----------------------------------------------------------------------------------


def test_rm_removes_files_and_trees(dest: Path) -> None:
    write(dest, "f", "x")
    write(dest, "d/e/g", "y")
    apply(dest, Rm(path="/f"), Rm(path="/d"))
    assert os.listdir(dest) == []


def test_rm_of_a_missing_path_is_an_error_unless_allowed(dest: Path) -> None:
    with pytest.raises(FileActionError, match="rm /nope: no such file or directory"):
        apply(dest, Rm(path="/nope"))
    apply(dest, Rm(path="/nope", allow_not_found=True))
    apply(dest, Rm(path="/no/pe", allow_not_found=True))


def test_rm_with_wildcards(dest: Path) -> None:
    for rel in ("a.log", "b.log", "keep.txt", "d/x.log"):
        write(dest, rel, "x")
    apply(dest, Rm(path="/*.log", allow_wildcard=True))
    assert listing(dest) == ["d", "d/x.log", "keep.txt"]


def test_rm_wildcard_without_match_is_an_error_unless_allowed(dest: Path) -> None:
    with pytest.raises(FileActionError, match=r"rm /\*.log: nothing matches"):
        apply(dest, Rm(path="/*.log", allow_wildcard=True))
    apply(dest, Rm(path="/*.log", allow_wildcard=True, allow_not_found=True))


def test_rm_wildcard_cleaned_away_removes_the_literal_path(dest: Path) -> None:
    write(dest, "keep", "x")
    apply(dest, Rm(path="/x*/../keep", allow_wildcard=True))
    assert not (dest / "keep").exists()


def test_rm_removes_a_symlink_not_its_target(dest: Path) -> None:
    write(dest, "target/f", "x")
    (dest / "link").symlink_to("/target")
    apply(dest, Rm(path="/link"))
    assert not os.path.lexists(dest / "link")
    assert (dest / "target/f").exists()


def test_rm_of_the_root_is_refused(dest: Path) -> None:
    write(dest, "f", "x")
    with pytest.raises(FileActionError, match="root directory cannot be removed"):
        apply(dest, Rm(path="/a/.."))
    assert (dest / "f").exists()


def test_rm_through_a_symlinked_parent_stays_in_the_root(dest: Path, outside: Path) -> None:
    (dest / "l").symlink_to("/../../outside")
    with pytest.raises(FileActionError, match="rm /l/secret: no such file"):
        apply(dest, Rm(path="/l/secret"))
    assert (outside / "secret").exists()


# -- apply_actions -----------------------------------------------------------------------


def test_actions_apply_in_order(src: Path, dest: Path) -> None:
    write(src, "lib.so", "so")
    apply_actions(
        [
            Mkdir(path="/app", make_parents=True),
            Mkfile(path="/app/tmp", data=b"t"),
            Copy(src_input=1, src="/lib.so", dest="/app/"),
            Rm(path="/app/tmp"),
        ],
        dest_root=dest,
        sources=[None, src],
    )
    assert listing(dest) == ["app", "app/lib.so"]


def test_scratch_source_is_an_empty_filesystem(dest: Path) -> None:
    with pytest.raises(FileActionError, match="not found: /x"):
        copy(dest, None, src="/x", dest="/out/", create_dest_path=True)
    copy(dest, None, src="/", dest="/out/", dir_copy_contents=True, create_dest_path=True)
    assert listing(dest) == ["out"]


def test_a_missing_input_is_an_error(dest: Path) -> None:
    with pytest.raises(FileActionError, match="input 3 does not exist"):
        apply_actions([Copy(src_input=3, src="/", dest="/")], dest_root=dest, sources=[None])


def test_os_errors_name_the_action_and_the_container_path(dest: Path, tmp_path: Path) -> None:
    write(dest, "file", "x")
    with pytest.raises(FileActionError) as caught:
        apply(dest, Mkfile(path="/file/x", data=b""))
    assert str(caught.value) == "mkfile /file/x: Not a directory: /file/x"
    assert str(tmp_path) not in str(caught.value)
