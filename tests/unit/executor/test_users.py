"""Docker's USER rules over an image's own /etc/passwd and /etc/group."""

from __future__ import annotations

from pathlib import Path

import pytest

from lazybuild.errors import UsageError
from lazybuild.executor.users import ResolvedUser, resolve_user

PASSWD = """\
root:x:0:0:root:/root:/bin/bash
daemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin
# a comment
app:x:1000:1000:App:/home/app:/bin/sh
nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin
+nisuser
"""

GROUP = """\
root:x:0:
daemon:x:1:
wheel:x:10:app,daemon
app:x:1000:
audio:x:29:app
nogroup:x:65534:
"""


@pytest.fixture
def rootfs(tmp_path: Path) -> Path:
    etc = tmp_path / "etc"
    etc.mkdir()
    (etc / "passwd").write_text(PASSWD)
    (etc / "group").write_text(GROUP)
    return tmp_path


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("", ResolvedUser(0, 0, (), "/root", "root")),
        ("root", ResolvedUser(0, 0, (), "/root", "root")),
        ("0", ResolvedUser(0, 0, (), "/root", "root")),
        ("app", ResolvedUser(1000, 1000, (10, 29), "/home/app", "app")),
        ("1000", ResolvedUser(1000, 1000, (10, 29), "/home/app", "app")),
        ("nobody", ResolvedUser(65534, 65534, (), "/nonexistent", "nobody")),
        # An explicit group replaces the primary group and drops supplementary ones.
        ("app:audio", ResolvedUser(1000, 29, (), "/home/app", "app")),
        ("app:0", ResolvedUser(1000, 0, (), "/home/app", "app")),
        ("1000:wheel", ResolvedUser(1000, 10, (), "/home/app", "app")),
        # Numeric ids need no entry: gid 0 and home / as in Docker.
        ("4242", ResolvedUser(4242, 0, (), "/", "4242")),
        ("4242:4343", ResolvedUser(4242, 4343, (), "/", "4242")),
        ("daemon:4343", ResolvedUser(1, 4343, (), "/usr/sbin", "daemon")),
    ],
)
def test_resolves_like_docker(rootfs: Path, spec: str, expected: ResolvedUser) -> None:
    assert resolve_user(rootfs, spec) == expected


def test_unknown_user_name_is_docker_error(rootfs: Path) -> None:
    with pytest.raises(UsageError) as raised:
        resolve_user(rootfs, "ghost")
    assert str(raised.value) == "unable to find user ghost: no matching entries in passwd file"


def test_unknown_group_name_is_docker_error(rootfs: Path) -> None:
    with pytest.raises(UsageError) as raised:
        resolve_user(rootfs, "app:ghosts")
    assert str(raised.value) == "unable to find group ghosts: no matching entries in group file"


@pytest.mark.parametrize("spec", ["-1", "2147483648", "app:-5"])
def test_out_of_range_ids_are_refused(rootfs: Path, spec: str) -> None:
    with pytest.raises(UsageError, match="out of range"):
        resolve_user(rootfs, spec)


def test_without_passwd_only_numeric_users_work(tmp_path: Path) -> None:
    assert resolve_user(tmp_path, "") == ResolvedUser(0, 0, (), "/", "root")
    assert resolve_user(tmp_path, "7:8") == ResolvedUser(7, 8, (), "/", "7")
    with pytest.raises(UsageError):
        resolve_user(tmp_path, "root")


def test_passwd_symlink_resolves_inside_rootfs(tmp_path: Path, rootfs: Path) -> None:
    # An absolute link in the image must not reach the host's /etc/passwd.
    real = rootfs / "usr" / "lib" / "passwd"
    real.parent.mkdir(parents=True)
    real.write_text("builder:x:321:321::/b:/bin/sh\n")
    (rootfs / "etc" / "passwd").unlink()
    (rootfs / "etc" / "passwd").symlink_to("/usr/lib/passwd")
    assert resolve_user(rootfs, "builder").uid == 321
    with pytest.raises(UsageError):
        resolve_user(rootfs, "root")  # the host has root; the image no longer does
