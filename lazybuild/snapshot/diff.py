"""An overlayfs upper directory as an OCI layer tar stream.

The upper directory of an overlay mount holds exactly what changed over its lower
directories, in overlayfs's own notation; a layer changeset says the same in the OCI
image-spec notation. The translation:

* a whiteout (a 0/0 character device, or a regular file carrying
  ``trusted.overlay.whiteout``) becomes an empty regular file ``.wh.<name>``;
* an opaque directory (``trusted.overlay.opaque=y``) becomes its directory entry plus
  an empty ``.wh..wh..opq`` inside it;
* overlayfs's own ``trusted.overlay.*`` xattrs are dropped, every other xattr is kept
  as a ``SCHILY.xattr.*`` PAX record;
* sockets are skipped (a layer cannot carry them);
* a file that shares its inode with an earlier name in the layer is a tar hardlink.

Whiteout and opaque markers are written the way containerd's change writer (which
BuildKit uses to export diffs) writes them: empty regular files with mode 0, owned by
uid/gid 0, no xattrs. The marker is not a file anyone reads, so copying the device's
or directory's permissions and owner (as Docker's overlay2 exporter does) would only
add noise; a fixed form keeps layers identical whoever deleted the file. Their mtime
is that of the overlay object they stand for (clamped like every other mtime), so it
stays reproducible.

The output is deterministic: entries in path order, each directory's children sorted
by name right after it; PAX format; numeric owners only (no user or group names);
mtimes in whole seconds, clamped to ``source_date_epoch`` when given (BuildKit's
rewrite-timestamp: anything newer becomes the epoch). The root of the upper directory
itself is not an entry. Symlinks are never followed.

Uppers that need the lower layers to be understood (metacopy files, redirected
directories) cannot be turned into a layer on their own and are refused.
"""

from __future__ import annotations

import os
import stat
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from lazybuild.errors import LazybuildError
from lazybuild.untar.writer import TarWriter, depth_first, read_xattrs, stat_header

__all__ = ["DiffError", "write_upper_as_tar"]

WHITEOUT_PREFIX = ".wh."
OPAQUE_MARKER = ".wh..wh..opq"

_OPAQUE_XATTR = "trusted.overlay.opaque"
_WHITEOUT_XATTR = "trusted.overlay.whiteout"
_METACOPY_XATTR = "trusted.overlay.metacopy"
_REDIRECT_XATTR = "trusted.overlay.redirect"
_COPY_BUFFER = 1 << 20


class DiffError(LazybuildError):
    """An upper directory that cannot be read or cannot be expressed as a layer."""


@dataclass(frozen=True)
class _Child:
    """One name in a directory of the upper, as it will appear in the layer."""

    tar_name: str  # the base name written to the layer
    path: Path  # where it is on disk
    info: os.stat_result  # lstat, never followed
    xattrs: dict[str, bytes]
    whiteout: bool


def write_upper_as_tar(upper: Path, out: BinaryIO, *, source_date_epoch: int | None = None) -> None:
    """Write the changes recorded in the overlayfs upper directory ``upper`` to ``out``
    as an uncompressed OCI layer tar (PAX), deterministically."""
    try:
        info = os.lstat(upper)
    except OSError as exc:
        raise DiffError(f"cannot read upper directory {upper}: {exc.strerror}") from None
    if not stat.S_ISDIR(info.st_mode):
        raise DiffError(f"upper directory {upper} is not a directory")
    with TarWriter(out, link_xattrs=False) as tar:
        _Writer(tar, source_date_epoch).write_tree(upper)


class _Writer:
    def __init__(self, tar: TarWriter, epoch: int | None) -> None:
        self.tar = tar
        self.epoch = epoch

    def _mtime(self, info: os.stat_result) -> int:
        mtime = int(info.st_mtime)
        if self.epoch is not None and mtime > self.epoch:
            return self.epoch
        return mtime

    def write_tree(self, upper: Path) -> None:
        """Write every entry under ``upper``, depth first, each directory's children in
        name order right after it."""

        def visit(item: tuple[_Child, str]) -> list[tuple[_Child, str]] | None:
            child, name = item
            return (
                self._named_children(child.path, name + "/")
                if self._write_entry(child, name)
                else None
            )

        depth_first(self._named_children(upper, ""), visit)

    def _named_children(self, directory: Path, prefix: str) -> list[tuple[_Child, str]]:
        return [(child, prefix + child.tar_name) for child in self._children(directory)]

    def _children(self, directory: Path) -> list[_Child]:
        try:
            names = os.listdir(directory)
        except OSError as exc:
            raise DiffError(f"cannot list {directory}: {exc.strerror}") from None
        children: list[_Child] = []
        for name in names:
            if name.startswith(WHITEOUT_PREFIX):
                raise DiffError(
                    f"cannot write {directory / name} to a layer: names starting with "
                    f"{WHITEOUT_PREFIX!r} are reserved for whiteouts"
                )
            path = directory / name
            info = _lstat(path)
            if stat.S_ISSOCK(info.st_mode):
                continue
            xattrs = _xattrs(path)
            if _is_whiteout(info, xattrs):
                children.append(_Child(WHITEOUT_PREFIX + name, path, info, xattrs, whiteout=True))
            else:
                children.append(_Child(name, path, info, xattrs, whiteout=False))
        children.sort(key=lambda child: os.fsencode(child.tar_name))
        return children

    def _write_entry(self, child: _Child, name: str) -> bool:
        """Write one entry; whether it is a directory whose children come next."""
        path, info, xattrs = child.path, child.info, child.xattrs
        if child.whiteout:
            self.tar.add(_marker(name, self._mtime(info)))
            return False
        for refused in (_METACOPY_XATTR, _REDIRECT_XATTR):
            if refused in xattrs:
                raise DiffError(
                    f"cannot write {path} to a layer: it carries {refused}, so its "
                    "content depends on the lower layers (mount without metacopy/redirect_dir)"
                )
        linkname = _readlink(path) if stat.S_ISLNK(info.st_mode) else ""
        mtime = self._mtime(info)
        member = stat_header(name, info, mtime=mtime, linkname=linkname, xattrs=xattrs)
        if member is None:
            raise DiffError(f"cannot write {path} to a layer: unsupported file type")
        if stat.S_ISREG(info.st_mode):
            if not self.tar.link_to_earlier(member, info):
                self._write_file(path, info, member)
            return False
        self.tar.add(member)
        if stat.S_ISDIR(info.st_mode):
            if xattrs.get(_OPAQUE_XATTR) == b"y":
                self.tar.add(_marker(name + "/" + OPAQUE_MARKER, mtime))
            return True
        return False

    def _write_file(self, path: Path, info: os.stat_result, member: tarfile.TarInfo) -> None:
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
        except OSError as exc:
            raise DiffError(f"cannot read {path}: {exc.strerror}") from None
        with os.fdopen(fd, "rb", buffering=_COPY_BUFFER) as content:
            opened = os.fstat(content.fileno())
            if (opened.st_dev, opened.st_ino) != (info.st_dev, info.st_ino):
                raise DiffError(f"cannot read {path}: it changed while the layer was written")
            try:
                self.tar.add(member, content)
            except OSError as exc:
                # tarfile raises a bare OSError when the file shrinks under it.
                reason = exc.strerror or str(exc)
                raise DiffError(f"cannot read {path}: {reason}") from None


def _marker(name: str, mtime: int) -> tarfile.TarInfo:
    member = tarfile.TarInfo(name)
    member.type = tarfile.REGTYPE
    member.mode = 0
    member.uid = member.gid = 0
    member.uname = member.gname = ""
    member.mtime = mtime
    return member


def _lstat(path: Path) -> os.stat_result:
    try:
        return os.lstat(path)
    except OSError as exc:
        raise DiffError(f"cannot read {path}: {exc.strerror}") from None


def _readlink(path: Path) -> str:
    try:
        return os.readlink(path)
    except OSError as exc:
        raise DiffError(f"cannot read symlink {path}: {exc.strerror}") from None


def _xattrs(path: Path) -> dict[str, bytes]:
    try:
        return read_xattrs(path)
    except OSError as exc:
        raise DiffError(f"cannot read xattrs of {path}: {exc.strerror}") from None


def _is_whiteout(info: os.stat_result, xattrs: dict[str, bytes]) -> bool:
    """Whether an entry is an overlayfs whiteout: a 0/0 character device, or an empty
    regular file marked with ``trusted.overlay.whiteout`` (kernel 6.7+ "xwhiteout")."""
    if stat.S_ISCHR(info.st_mode):
        return info.st_rdev == os.makedev(0, 0)
    return stat.S_ISREG(info.st_mode) and info.st_size == 0 and _WHITEOUT_XATTR in xattrs
