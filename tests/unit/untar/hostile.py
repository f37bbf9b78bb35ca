"""Crafted tar archives for the extractor's hostile-input tests, and a canary: a
directory outside the extraction root whose every attribute must stay as it was."""

from __future__ import annotations

import io
import os
import tarfile
from dataclasses import dataclass
from pathlib import Path


def member(name: str, kind: bytes = tarfile.REGTYPE, **fields: object) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.mode = 0o755 if kind == tarfile.DIRTYPE else 0o644
    info.mtime = 1_500_000_000
    for key, value in fields.items():
        setattr(info, key, value)
    return info


def tar_bytes(*entries: tuple[tarfile.TarInfo, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for info, data in entries:
            info.size = len(data) if info.isreg() else 0
            tar.addfile(info, io.BytesIO(data) if info.isreg() else None)
    return buffer.getvalue()


def hostile_attributes(name: str) -> tarfile.TarInfo:
    """A directory entry whose attributes, applied anywhere, would show."""
    return member(
        name,
        tarfile.DIRTYPE,
        mode=0o777,
        uid=4242,
        gid=4242,
        mtime=12345,
        pax_headers={"SCHILY.xattr.user.hostile": "yes"},
    )


def swap_parent_for_symlink(target: Path) -> bytes:
    """The audit's case: ``a/``, ``a/victim/``, then ``a -> target``: deferred directory
    attributes followed the symlink to ``target/victim``."""
    return tar_bytes(
        (member("a/", tarfile.DIRTYPE), b""),
        (hostile_attributes("a/victim/"), b""),
        (member("a", tarfile.SYMTYPE, linkname=str(target)), b""),
    )


@dataclass(frozen=True)
class Canary:
    """A directory tree outside the root, and how it looked before."""

    root: Path
    before: dict[str, tuple[object, ...]]

    @classmethod
    def plant(cls, root: Path) -> Canary:
        (root / "victim").mkdir(parents=True)
        (root / "victim" / "file").write_bytes(b"canary")
        os.utime(root / "victim", (1_000_000, 1_000_000))
        return cls(root, _snapshot(root))

    def assert_untouched(self) -> None:
        assert _snapshot(self.root) == self.before, "the extraction changed files outside its root"


def _snapshot(root: Path) -> dict[str, tuple[object, ...]]:
    facts: dict[str, tuple[object, ...]] = {}
    for path in [root, *sorted(root.rglob("*"))]:
        st = path.lstat()
        xattrs = tuple(sorted(os.listxattr(path, follow_symlinks=False)))
        content = path.read_bytes() if path.is_file() and not path.is_symlink() else b""
        facts[str(path.relative_to(root))] = (
            st.st_mode, st.st_uid, st.st_gid, st.st_mtime_ns, st.st_ino, xattrs, content,
        )  # fmt: skip
    return facts
