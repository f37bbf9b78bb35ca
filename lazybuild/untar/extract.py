"""Extracting a tar stream into a directory, never outside it.

One extractor for the two kinds of archive lazybuild unpacks, told apart by a
:class:`Policy`:

- a **layer** (:data:`LAYER`, base layers that are not eStargz) becomes an overlayfs
  lower directory: ``.wh.<name>`` a 0/0 character device, ``.wh..wh..opq`` the
  ``trusted.overlay.opaque`` xattr, eStargz artefacts at the root dropped; a symlink
  met inside a path is refused, since what it means depends on the layers below;
- an **archive** (:func:`archive_policy`, ``ADD x.tar``) is content: symlinks met on the
  way resolve inside the extraction root, an absolute target counting from it, as
  Docker's chrooted untar; whiteouts are plain files; an owner may be imposed.

Every path is reached through :class:`~lazybuild.untar.rootdir.RootDir`, so no entry,
whatever came before it, can make the extractor touch anything outside the root. The
last entry for a path wins, as Docker applies them. Directory attributes are set at
the end, deepest first (creating a child changes a directory's mtime, and a read-only
mode must not stop children being written), each only if the directory still is the
one that entry made: a directory an entry replaced, or one a later symlink now stands
in front of, gets nothing. Sparse files keep their holes. Blocking: run it in a thread.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import stat
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from lazybuild.errors import FormatError
from lazybuild.untar import tarreader as tr
from lazybuild.untar.compression import DECODE_ERRORS
from lazybuild.untar.rootdir import RootDir, proc_path
from lazybuild.untar.tarreader import TarEntry, TarReader

WHITEOUT_PREFIX = ".wh."
OPAQUE_MARKER = ".wh..wh..opq"
OPAQUE_XATTR = "trusted.overlay.opaque"
# overlayfs's own bookkeeping: an entry carrying it would change what a layer means.
_OVERLAY_XATTR_PREFIXES = ("trusted.overlay.", "user.overlay.")

Owner = tuple[int, int]
# Linux's PATH_MAX: a longer name is unusable by programs, and walking it costs a
# syscall per component for every entry below it.
MAX_NAME_BYTES = 4096
# Failures of the machine rather than of the archive, reported as they are.
_HOST_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EIO, errno.EROFS, errno.ENOMEM})


@dataclass(frozen=True)
class Policy:
    follow_symlinks: bool  # symlinks inside paths resolve in the root (else refused)
    overlay_whiteouts: bool  # .wh.* entries become overlayfs whiteouts
    dropped_at_root: frozenset[str] = frozenset()  # names skipped at the top level
    owner: Owner | None = None  # imposed on every entry instead of the archive's
    root_attributes: bool = False  # an entry for the root sets the root's attributes


def layer_policy(dropped_at_root: frozenset[str]) -> Policy:
    return Policy(
        follow_symlinks=False,
        overlay_whiteouts=True,
        dropped_at_root=dropped_at_root,
        root_attributes=True,
    )


def archive_policy(owner: Owner | None) -> Policy:
    return Policy(follow_symlinks=True, overlay_whiteouts=False, owner=owner)


def caller_owner() -> Owner | None:
    """The owner to impose on what is unpacked for this process's user: none as root
    (the archive's owners are kept), else this process's own."""
    return None if os.geteuid() == 0 else (os.getuid(), os.getgid())


class DamagedArchiveError(FormatError):
    """A stream that did not decompress: ``where``, then the decoder's ``reason``."""

    def __init__(self, where: str, reason: str) -> None:
        super().__init__(f"{where}: {reason}")
        self.reason = reason


def set_xattr(
    path: str | os.PathLike[str],
    name: str,
    value: bytes,
    *,
    on_symlink: bool = False,
    follow_symlinks: bool = False,
) -> None:
    """Set xattr ``name`` on ``path`` itself (a symlink is not followed, unless asked:
    ``/proc/self/fd/N`` must be followed to reach the handle's inode).

    ``user.*`` and ``security.capability`` are the file's content and must be kept, so
    failing to set them is an error. Other namespaces (SELinux labels, ACLs, ``trusted.*``)
    depend on the host's policy and privileges: kept when the kernel accepts them, as
    BuildKit does. overlayfs's own bookkeeping is never copied.
    """
    if name.startswith(_OVERLAY_XATTR_PREFIXES):
        return
    if not name or "\0" in name:
        raise OSError(errno.EINVAL, f"invalid xattr name {name[:80]!r}")
    try:
        os.setxattr(path, name, value, follow_symlinks=follow_symlinks)
    except OSError:
        # Most namespaces refuse xattrs on symlinks; keep going as tar -x does.
        if not on_symlink and (name.startswith("user.") or name == "security.capability"):
            raise


def extract(stream: BinaryIO, dest: Path, policy: Policy, where: str) -> None:
    """Extract the uncompressed tar ``stream`` into the existing directory ``dest``.

    Raises :class:`FormatError` naming ``where`` and the entry for a malformed archive,
    an entry that would leave ``dest``, or an entry that cannot be created; a
    :class:`DamagedArchiveError` when ``stream`` fails to decompress.
    """
    with RootDir(dest, follow_symlinks=policy.follow_symlinks) as root:
        extractor = _Extractor(root, policy)
        reader = TarReader(stream)
        name = ""
        try:
            for entry in reader:
                name = entry.name
                extractor.add(entry, reader)
            name = ""
            extractor.finish()
        except FormatError as error:
            raise FormatError(f"{where}: {_about(name)}{error}") from None
        except RecursionError:
            raise FormatError(f"{where}: {_about(name)}a directory tree too deep") from None
        except DECODE_ERRORS as error:
            raise DamagedArchiveError(where, str(error)) from None
        except OSError as error:
            message = f"{where}: {_about(name)}{_os_error(error)}"
            if error.errno in _HOST_ERRNOS:
                raise OSError(
                    error.errno, message
                ) from error  # the host's trouble, not the input's
            raise FormatError(message) from error


def _about(name: str) -> str:
    return f"entry {name[:200]!r}: " if name else ""


def _os_error(error: OSError) -> str:
    text = error.strerror or str(error)
    if error.filename is not None:
        text += f" ({error.filename})"
    return text


def clean_name(name: str) -> str:
    """The entry's path relative to the root ("" for the root itself); a name climbing
    above the root is refused, as Docker refuses a breakout."""
    if len(name.encode("utf-8", "surrogateescape")) > MAX_NAME_BYTES:
        raise FormatError(f"a name of over {MAX_NAME_BYTES} bytes")
    parts: list[str] = []
    for part in name.split("/"):
        if part in ("", "."):
            continue
        if part == "..":
            if not parts:
                raise FormatError("points outside the extraction root")
            parts.pop()
            continue
        parts.append(part)
    return "/".join(parts)


def _split(relative: str) -> tuple[list[str], str]:
    parent, _, base = relative.rpartition("/")
    return (parent.split("/") if parent else []), base


@dataclass
class _PendingDirectory:
    parts: list[str]
    entry: TarEntry
    identity: tuple[int, int]
    serial: int  # when its entry came: a removal of it or a parent after that voids it


class _Extractor:
    def __init__(self, root: RootDir, policy: Policy) -> None:
        self._root = root
        self._policy = policy
        self._as_root = os.geteuid() == 0
        self._dirs: dict[str, _PendingDirectory] = {}  # by name: the last entry wins
        # Paths whose tree an entry removed, with when: checked per pending directory at
        # the end (its depth in lookups) rather than by scanning every pending one at
        # each removal, which a long archive of replacements would make quadratic.
        self._removed: dict[str, int] = {}
        self._serial = 0
        self._parent: tuple[str, int] | None = None  # the last parent opened, reused

    def add(self, entry: TarEntry, reader: TarReader) -> None:
        self._serial += 1
        relative = clean_name(entry.name)
        if not relative:
            if entry.kind == tr.DIRECTORY and self._policy.root_attributes:
                self._remember_directory(relative, entry, self._root.fd)
            return
        if relative in self._policy.dropped_at_root:
            return
        parents, base = _split(relative)
        parent = self._open_parent(parents)
        if self._policy.overlay_whiteouts and base == OPAQUE_MARKER:
            os.setxattr(proc_path(parent), OPAQUE_XATTR, b"y")
        elif self._policy.overlay_whiteouts and base.startswith(WHITEOUT_PREFIX):
            self._whiteout(parent, base[len(WHITEOUT_PREFIX) :], entry)
        elif entry.kind == tr.DIRECTORY:
            self._directory(parent, parents, base, relative, entry)
        else:
            self._remove(parent, base, relative)
            self._create(parent, base, entry, reader)

    def finish(self) -> None:
        self._forget_parent()
        pending = sorted(self._dirs.values(), key=lambda d: len(d.parts), reverse=True)
        for directory in pending:
            if self._removed_since(directory):
                continue
            try:
                fd = self._root.open_directory(directory.parts)
            except OSError:
                continue  # replaced, or now behind a symlink: not the entry's directory
            try:
                if _identity(fd) == directory.identity:
                    self._attributes(fd, directory.entry)
            finally:
                os.close(fd)

    # -- entries ----------------------------------------------------------------

    def _directory(
        self, parent: int, parents: list[str], base: str, relative: str, entry: TarEntry
    ) -> None:
        follow = self._policy.follow_symlinks
        try:
            st = os.stat(base, dir_fd=parent, follow_symlinks=False)
        except FileNotFoundError:
            st = None
        if st is not None and not stat.S_ISDIR(st.st_mode):
            if follow and stat.S_ISLNK(st.st_mode):
                # An archive's directory may land in an existing symlinked directory.
                with contextlib.suppress(OSError):
                    fd = self._root.open_directory([*parents, base])
                    try:
                        self._remember_directory(relative, entry, fd, [*parents, base])
                    finally:
                        os.close(fd)
                    return
            self._remove(parent, base, relative)
            st = None
        if st is None:
            os.mkdir(base, 0o700, dir_fd=parent)
        fd = os.open(base, os.O_PATH | os.O_NOFOLLOW | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=parent)
        try:
            self._remember_directory(relative, entry, fd, [*parents, base])
        finally:
            os.close(fd)

    def _remember_directory(
        self, relative: str, entry: TarEntry, fd: int, parts: list[str] | None = None
    ) -> None:
        self._dirs.pop(relative, None)  # re-inserted: the order of the last entry counts
        self._dirs[relative] = _PendingDirectory(parts or [], entry, _identity(fd), self._serial)

    def _removed_since(self, directory: _PendingDirectory) -> bool:
        """Whether the directory, or one of its parents, was removed after its entry."""
        path = ""
        for part in directory.parts:
            path = f"{path}/{part}" if path else part
            if self._removed.get(path, 0) > directory.serial:
                return True
        return False

    def _create(self, parent: int, base: str, entry: TarEntry, reader: TarReader) -> None:
        if entry.kind == tr.FILE:
            self._regular(parent, base, entry, reader)
            return
        if entry.kind == tr.HARDLINK:
            self._hardlink(parent, base, entry)
        elif entry.kind == tr.SYMLINK:
            os.symlink(entry.linkname, base, dir_fd=parent)
            self._symlink_attributes(parent, base, entry)
            return
        elif entry.kind in (tr.CHAR_DEVICE, tr.BLOCK_DEVICE):
            kind = stat.S_IFCHR if entry.kind == tr.CHAR_DEVICE else stat.S_IFBLK
            os.mknod(base, kind | 0o600, os.makedev(entry.devmajor, entry.devminor), dir_fd=parent)
        else:
            os.mkfifo(base, 0o600, dir_fd=parent)
        fd = os.open(base, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=parent)
        try:
            if stat.S_ISLNK(os.fstat(fd).st_mode):  # a hardlink to a symlink is one
                self._symlink_attributes(parent, base, entry)
            else:
                self._attributes(fd, entry)
        finally:
            os.close(fd)

    def _regular(self, parent: int, base: str, entry: TarEntry, reader: TarReader) -> None:
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        fd = os.open(base, flags, 0o600, dir_fd=parent)
        try:
            for offset, piece in reader.data():
                _write_at(fd, piece, offset)
            if entry.sparse is not None:
                os.ftruncate(fd, entry.size)  # the holes: nothing written, nothing stored
            self._attributes(fd, entry)
        finally:
            os.close(fd)

    def _hardlink(self, parent: int, base: str, entry: TarEntry) -> None:
        target = clean_name(entry.linkname)
        if not target:
            raise FormatError(f"hardlink to the extraction root ({entry.linkname!r})")
        target_parents, target_base = _split(target)
        try:
            target_dir = self._root.open_directory(target_parents)
        except (FileNotFoundError, NotADirectoryError):
            raise FormatError(f"hardlink to missing {entry.linkname!r}") from None
        try:
            try:
                target_mode = os.stat(target_base, dir_fd=target_dir, follow_symlinks=False).st_mode
            except FileNotFoundError:
                raise FormatError(f"hardlink to missing {entry.linkname!r}") from None
            if stat.S_ISDIR(target_mode):
                raise FormatError(f"hardlink to a directory ({entry.linkname!r})")
            os.link(
                target_base, base, src_dir_fd=target_dir, dst_dir_fd=parent, follow_symlinks=False
            )
        finally:
            os.close(target_dir)

    def _whiteout(self, parent: int, name: str, entry: TarEntry) -> None:
        if name in ("", ".", "..") or "/" in name:
            raise FormatError(f"bad whiteout {entry.name!r}")
        self._remove(parent, name, clean_name(f"{entry.name}/../{name}"))
        os.mknod(name, stat.S_IFCHR | 0o000, os.makedev(0, 0), dir_fd=parent)
        if self._as_root:
            os.chown(name, *self._owner(entry), dir_fd=parent, follow_symlinks=False)

    # -- paths ------------------------------------------------------------------

    def _open_parent(self, parts: list[str]) -> int:
        key = "/".join(parts)
        if self._parent is not None and self._parent[0] == key:
            return self._parent[1]
        self._forget_parent()
        fd = self._root.open_directory(parts, self._make_directory)
        self._parent = (key, fd)
        return fd

    def _forget_parent(self) -> None:
        if self._parent is not None:
            os.close(self._parent[1])
            self._parent = None

    def _make_directory(self, parent: int, name: str) -> None:
        """A parent the archive does not list: 0755, root's or the imposed owner's."""
        os.mkdir(name, 0o700, dir_fd=parent)
        if self._policy.owner is not None:
            os.chown(name, *self._policy.owner, dir_fd=parent, follow_symlinks=False)
        os.chmod(name, 0o755, dir_fd=parent, follow_symlinks=True)  # just made: a directory

    def _remove(self, parent: int, name: str, relative: str) -> None:
        """Remove what is at ``name`` in ``parent`` (``relative`` from the root): a later
        entry replaces it, and no attributes of what was there outlive it."""
        self._dirs.pop(relative, None)
        try:
            mode = os.stat(name, dir_fd=parent, follow_symlinks=False).st_mode
        except FileNotFoundError:
            return
        if stat.S_ISDIR(mode):
            # Only a removed tree can hold pending directories below it.
            self._removed[relative] = self._serial
            self._forget_parent_if_below(parent)
            shutil.rmtree(name, dir_fd=parent)
        else:
            os.unlink(name, dir_fd=parent)

    def _forget_parent_if_below(self, parent: int) -> None:
        # The cached parent may be inside the tree about to go; ``parent`` itself is
        # what the caller holds, so it stays open until the next lookup replaces it.
        if self._parent is not None and self._parent[1] != parent:
            self._forget_parent()

    # -- attributes ---------------------------------------------------------------

    def _owner(self, entry: TarEntry) -> tuple[int, int]:
        return self._policy.owner if self._policy.owner is not None else (entry.uid, entry.gid)

    def _attributes(self, fd: int, entry: TarEntry) -> None:
        """Owner, mode, xattrs and mtime of the (non-symlink) inode ``fd`` holds."""
        path = proc_path(fd)
        st = os.fstat(fd)
        uid, gid = self._owner(entry)
        if (st.st_uid, st.st_gid) != (uid, gid):
            self._chown(lambda: os.chown(path, uid, gid))
        os.chmod(path, entry.mode & 0o7777)  # after chown, which clears set-id bits
        for name, value in entry.xattrs.items():
            set_xattr(path, name, value, follow_symlinks=True)
        os.utime(path, ns=(entry.mtime_ns, entry.mtime_ns))

    def _symlink_attributes(self, parent: int, base: str, entry: TarEntry) -> None:
        uid, gid = self._owner(entry)
        self._chown(lambda: os.chown(base, uid, gid, dir_fd=parent, follow_symlinks=False))
        for name, value in entry.xattrs.items():
            set_xattr(proc_path(parent, base), name, value, on_symlink=True)
        os.utime(base, ns=(entry.mtime_ns, entry.mtime_ns), dir_fd=parent, follow_symlinks=False)

    def _chown(self, change: Callable[[], None]) -> None:
        try:
            change()
        except PermissionError:
            if self._as_root:
                raise  # owners other than our own need root: without it they stay ours


def _identity(fd: int) -> tuple[int, int]:
    st = os.fstat(fd)
    return st.st_dev, st.st_ino


def _write_at(fd: int, data: bytes, offset: int) -> None:
    view = memoryview(data)
    while view:
        written = os.pwrite(fd, view, offset)
        view = view[written:]
        offset += written
