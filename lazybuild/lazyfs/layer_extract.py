"""Extracting a layer tar into a directory in overlayfs "lower dir" form.

OCI whiteouts become what overlayfs understands: ``.wh.<name>`` a 0/0 character
device ``<name>``, ``.wh..wh..opq`` the ``trusted.overlay.opaque=y`` xattr on its
directory. eStargz artefacts at the root (TOC, landmarks) are dropped. Owners,
modes, mtimes, xattrs, hardlinks, symlinks, devices and fifos are kept (owners and
devices need root).

Nothing is ever written outside the destination: names with ``..`` are refused,
and every parent directory is checked to be a real directory (not a symlink the
layer planted), so ``link -> /etc`` followed by ``link/passwd`` is refused too.
Blocking: runs in a worker thread.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import stat
import tarfile
from pathlib import Path
from typing import BinaryIO

from lazybuild.errors import FormatError
from lazybuild.estargz.toc import NO_PREFETCH_LANDMARK, PREFETCH_LANDMARK, TOC_TAR_NAME

WHITEOUT_PREFIX = ".wh."
OPAQUE_MARKER = ".wh..wh..opq"
OPAQUE_XATTR = "trusted.overlay.opaque"
_ROOT_ARTEFACTS = frozenset({TOC_TAR_NAME, PREFETCH_LANDMARK, NO_PREFETCH_LANDMARK})
_XATTR_PAX_PREFIX = "SCHILY.xattr."
_COPY_BLOCK = 1 << 20


def extract_layer_tar(stream: BinaryIO, dest: Path, where: str) -> None:
    """Extract the uncompressed tar ``stream`` into the existing directory ``dest``."""
    extractor = _Extractor(dest, where)
    with tarfile.open(fileobj=stream, mode="r|", errors="surrogateescape") as archive:
        for member in archive:
            extractor.add(member, archive)
    extractor.finish()


class _Extractor:
    def __init__(self, dest: Path, where: str) -> None:
        self._dest = dest
        self._where = where
        self._as_root = os.geteuid() == 0
        self._checked_dirs: set[str] = {""}  # relative dirs known to be real directories
        self._dirs: list[tuple[Path, tarfile.TarInfo]] = []  # attributes set at the end

    def add(self, member: tarfile.TarInfo, archive: tarfile.TarFile) -> None:
        relative = self._relative(member.name)
        if relative == "":
            if member.isdir():
                self._dirs.append((self._dest, member))
            return
        if relative in _ROOT_ARTEFACTS:
            return
        parent_rel, _, base = relative.rpartition("/")
        parent = self._directory(parent_rel)
        if base == OPAQUE_MARKER:
            os.setxattr(parent, OPAQUE_XATTR, b"y", follow_symlinks=False)
        elif base.startswith(WHITEOUT_PREFIX):
            self._whiteout(parent, base[len(WHITEOUT_PREFIX) :], member)
        else:
            self._entry(parent / base, relative, member, archive)

    def finish(self) -> None:
        # Deepest first, after all children exist: creating a child changes a dir's mtime,
        # and a read-only mode must not stop children from being written.
        for path, member in reversed(self._dirs):
            self._apply_attributes(path, member)

    # -- entries ----------------------------------------------------------------

    def _entry(
        self, path: Path, relative: str, member: tarfile.TarInfo, archive: tarfile.TarFile
    ) -> None:
        if self._replace_existing(path, keep_dir=member.isdir()):
            self._dirs.append((path, member))
            return
        if member.isdir():
            path.mkdir(mode=0o700)
            self._checked_dirs.add(relative)
            self._dirs.append((path, member))
            return
        if member.islnk():
            self._hardlink(path, member)
            return
        if member.isreg():
            self._regular(path, member, archive)
        elif member.issym():
            os.symlink(member.linkname, path)
        elif member.ischr() or member.isblk():
            kind = stat.S_IFCHR if member.ischr() else stat.S_IFBLK
            os.mknod(path, kind | 0o600, os.makedev(member.devmajor, member.devminor))
        elif member.isfifo():
            os.mkfifo(path, 0o600)
        else:
            raise FormatError(
                f"{self._where}: {member.name!r} has unsupported type {member.type!r}"
            )
        self._apply_attributes(path, member)

    def _regular(self, path: Path, member: tarfile.TarInfo, archive: tarfile.TarFile) -> None:
        source = archive.extractfile(member)
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        with os.fdopen(os.open(path, flags, 0o600), "wb") as out:
            if source is not None:
                shutil.copyfileobj(source, out, _COPY_BLOCK)

    def _hardlink(self, path: Path, member: tarfile.TarInfo) -> None:
        target_rel = self._relative(member.linkname)
        target_parent, _, target_base = target_rel.rpartition("/")
        target = self._directory(target_parent, create=False) / target_base
        try:
            is_dir = stat.S_ISDIR(target.lstat().st_mode)
        except FileNotFoundError:
            raise FormatError(
                f"{self._where}: hardlink {member.name!r} to missing {member.linkname!r}"
            ) from None
        if is_dir:
            raise FormatError(f"{self._where}: hardlink {member.name!r} to a directory")
        os.link(target, path, follow_symlinks=False)

    def _whiteout(self, parent: Path, name: str, member: tarfile.TarInfo) -> None:
        if name in ("", ".", "..") or "/" in name:
            raise FormatError(f"{self._where}: bad whiteout {member.name!r}")
        path = parent / name
        self._replace_existing(path, keep_dir=False)
        os.mknod(path, stat.S_IFCHR | 0o000, os.makedev(0, 0))
        if self._as_root:
            os.lchown(path, member.uid, member.gid)

    # -- paths ------------------------------------------------------------------

    def _relative(self, name: str) -> str:
        parts = [part for part in name.split("/") if part not in ("", ".")]
        if ".." in parts:
            raise FormatError(f"{self._where}: entry {name!r} points outside the layer")
        return "/".join(parts)

    def _directory(self, relative: str, create: bool = True) -> Path:
        """``dest/relative``, making sure every component is a real directory."""
        path = self._dest
        walked = ""
        for part in relative.split("/") if relative else ():
            path = path / part
            walked = f"{walked}/{part}" if walked else part
            if walked in self._checked_dirs:
                continue
            try:
                mode = path.lstat().st_mode
            except FileNotFoundError:
                if not create:
                    raise FormatError(f"{self._where}: {relative!r} does not exist") from None
                path.mkdir(mode=0o755)
                mode = stat.S_IFDIR
            if not stat.S_ISDIR(mode):
                raise FormatError(
                    f"{self._where}: {relative!r} goes through {walked!r}, which is not a directory"
                )
            self._checked_dirs.add(walked)
        return path

    def _replace_existing(self, path: Path, keep_dir: bool) -> bool:
        """Remove what is at ``path`` (a later entry wins); True when it is a kept dir."""
        try:
            mode = path.lstat().st_mode
        except FileNotFoundError:
            return False
        if stat.S_ISDIR(mode):
            if keep_dir:
                return True
            shutil.rmtree(path)
            self._checked_dirs = {""}  # paths below it may now be anything
        else:
            path.unlink()
        return False

    # -- attributes ---------------------------------------------------------------

    def _apply_attributes(self, path: Path, member: tarfile.TarInfo) -> None:
        if self._as_root:
            os.lchown(path, member.uid, member.gid)
        if not member.issym():
            os.chmod(path, member.mode & 0o7777)  # after chown, which clears set-id bits
        for key, value in member.pax_headers.items():
            if key.startswith(_XATTR_PAX_PREFIX):
                self._set_xattr(path, key[len(_XATTR_PAX_PREFIX) :], value, member)
        os.utime(path, (member.mtime, member.mtime), follow_symlinks=False)

    def _set_xattr(self, path: Path, name: str, value: str, member: tarfile.TarInfo) -> None:
        data = value.encode("utf-8", "surrogateescape")
        if member.issym():
            # Most namespaces refuse xattrs on symlinks; keep going as tar -x does.
            with contextlib.suppress(OSError):
                os.setxattr(path, name, data, follow_symlinks=False)
            return
        os.setxattr(path, name, data, follow_symlinks=False)
