"""ADD's local archives: recognising a tar and extracting it, as Docker and BuildKit do.

A source file is an archive when, after optional gzip, bzip2, xz or zstd decompression
(recognised by magic bytes, never by the file name), it starts with a valid tar header;
anything else is copied as a plain file by the caller.

Extraction writes into an existing directory, the *extraction root*, and never outside it,
as Docker's chrooted untar: names are cleaned, a name that climbs above the root with
``..`` is refused, and symlinks met on the way (including ones the archive itself just
made) resolve inside the extraction root, an absolute target counting from it. The last
path component is never followed (a directory entry excepted, which may land in an
existing symlinked directory), so an entry replaces whatever symlink or file was there.

Entries keep the archive's modes, mtimes, xattrs (``SCHILY.xattr.*``) and numeric owners,
unless an owner is given (``ADD --chown``), which then applies to every entry. Parent
directories the archive does not list are created 0755. Whiteout files (``.wh.*``) are
ordinary files here: an archive is content, not a layer. Blocking code: run it in a
thread.
"""

from __future__ import annotations

import bz2
import contextlib
import decimal
import gzip
import lzma
import os
import shutil
import stat
import tarfile
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO, cast

import zstandard

from lazybuild.errors import LazybuildError
from lazybuild.executor.errors import ContainerError
from lazybuild.executor.rootpath import resolve_in_root

__all__ = ["ArchiveError", "extract_tar", "is_tar_archive", "set_xattr"]

_GZIP_MAGIC = b"\x1f\x8b\x08"
_BZIP2_MAGIC = b"BZh"
_XZ_MAGIC = b"\xfd7zXZ\x00"
_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
_MAGIC_LENGTH = 6
_COPY_BLOCK = 1 << 20
_XATTR_PAX_PREFIX = "SCHILY.xattr."
_OVERLAY_XATTR_PREFIXES = ("trusted.overlay.", "user.overlay.")
# Times outside what the kernel stores become the epoch, as BuildKit's untar does.
_MAX_TIME_NS = 2**63 - 1

# What decompression raises on data that only looked like its format.
_DECODE_ERRORS = (OSError, EOFError, zlib.error, lzma.LZMAError, zstandard.ZstdError)

Owner = tuple[int, int]


class ArchiveError(LazybuildError):
    """An archive that cannot be extracted safely or at all."""


# -- xattrs (shared with the copier) -----------------------------------------------------


def set_xattr(path: Path, name: str, value: bytes) -> None:
    """Set xattr ``name`` on ``path`` itself (a symlink is not followed).

    ``user.*`` and ``security.capability`` are the file's content and must be kept, so
    failing to set them is an error. Other namespaces (SELinux labels, ACLs, ``trusted.*``)
    depend on the host's policy and privileges: kept when the kernel accepts them, as
    BuildKit does. overlayfs's own bookkeeping (``trusted.overlay.*``, ``user.overlay.*``
    with ``userxattr``) is never copied: it would change what an upper directory means.
    """
    if name.startswith(_OVERLAY_XATTR_PREFIXES):
        return
    try:
        os.setxattr(path, name, value, follow_symlinks=False)
    except OSError:
        if name.startswith("user.") or name == "security.capability":
            raise


# -- recognising -------------------------------------------------------------------------


@contextlib.contextmanager
def _decompressed(path: Path) -> Iterator[BinaryIO]:
    """``path``'s bytes, decompressed when they start with a known compression magic."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    with os.fdopen(fd, "rb") as raw:
        head = raw.read(_MAGIC_LENGTH)
        raw.seek(0)
        stream = _decompressor(raw, head)
        if stream is None:
            yield raw
            return
        with stream:
            yield stream


def _decompressor(raw: BinaryIO, head: bytes) -> BinaryIO | None:
    """A reader decompressing ``raw`` by the magic ``head`` starts with; None if none."""
    stream: object
    if head.startswith(_GZIP_MAGIC):
        stream = gzip.GzipFile(fileobj=raw, mode="rb")
    elif head.startswith(_BZIP2_MAGIC):
        stream = bz2.BZ2File(raw, mode="rb")
    elif head.startswith(_XZ_MAGIC):
        stream = lzma.LZMAFile(raw, mode="rb")  # noqa: SIM115 (the caller closes it)
    elif head.startswith(_ZSTD_MAGIC):
        stream = zstandard.ZstdDecompressor().stream_reader(raw, read_across_frames=True)
    else:
        return None
    # Each is a readable, closable binary stream: all that sniffing and tarfile's "r|" need.
    return cast(BinaryIO, stream)


def _read_block(stream: BinaryIO) -> bytes:
    block = b""
    while len(block) < tarfile.BLOCKSIZE:
        more = stream.read(tarfile.BLOCKSIZE - len(block))
        if not more:
            break
        block += more
    return block


def is_tar_archive(path: Path) -> bool:
    """True when ``path`` is a regular file holding a (possibly compressed) tar.

    As Go's ``tar.Reader.Next`` does for BuildKit, the first 512 bytes must be a header
    with a valid checksum: a text file named ``x.tar`` is not an archive, and neither is
    gzip of something other than a tar.
    """
    try:
        if not stat.S_ISREG(os.lstat(path).st_mode):
            return False
        with _decompressed(path) as stream:
            block = _read_block(stream)
        tarfile.TarInfo.frombuf(block, "utf-8", "surrogateescape")
    except (*_DECODE_ERRORS, tarfile.HeaderError):
        return False
    return True


# -- extracting --------------------------------------------------------------------------


def extract_tar(archive: Path, dest: Path, *, owner: Owner | None) -> None:
    """Extract ``archive`` (see :func:`is_tar_archive`) into the existing directory ``dest``.

    ``owner`` (uid, gid), when given, owns every entry instead of the archive's owners.
    """
    extractor = _Extractor(dest, owner)
    try:
        with (
            _decompressed(archive) as stream,
            tarfile.open(fileobj=stream, mode="r|", errors="surrogateescape") as tar,
        ):
            for member in tar:
                extractor.add(member, tar)
    except (tarfile.TarError, EOFError, zlib.error, lzma.LZMAError, zstandard.ZstdError) as error:
        raise ArchiveError(f"archive is damaged: {error}") from None
    extractor.finish()


def _clean_name(name: str) -> str:
    """The entry's path relative to the extraction root ("" for the root itself)."""
    parts: list[str] = []
    for part in name.split("/"):
        if part in ("", "."):
            continue
        if part == "..":
            if not parts:
                raise ArchiveError(f"archive entry {name!r} points outside the extraction root")
            parts.pop()
            continue
        parts.append(part)
    return "/".join(parts)


def _mtime_ns(member: tarfile.TarInfo) -> int:
    """The entry's mtime in nanoseconds; PAX's decimal string keeps what a float loses."""
    text = member.pax_headers.get("mtime") or str(member.mtime)
    try:
        nanoseconds = int(decimal.Decimal(text) * 1_000_000_000)
    except decimal.InvalidOperation:
        return 0
    return nanoseconds if 0 <= nanoseconds <= _MAX_TIME_NS else 0


class _Extractor:
    def __init__(self, root: Path, owner: Owner | None) -> None:
        self._root = root
        self._owner = owner
        # Directory attributes are set last, deepest first: creating a child changes a
        # directory's mtime, and a read-only mode must not stop its children being written.
        self._dirs: list[tuple[Path, tarfile.TarInfo]] = []

    def add(self, member: tarfile.TarInfo, tar: tarfile.TarFile) -> None:
        name = _clean_name(member.name)
        if not name:
            return  # the extraction root itself: it belongs to the destination
        path = self._host_path(name, follow_last=member.isdir())
        self._make_parents(path, name)
        if self._clear(path, keep_dir=member.isdir()):
            self._dirs.append((path, member))
            return
        self._create(path, name, member, tar)
        if member.isdir():
            self._dirs.append((path, member))
        else:
            self._apply_attributes(path, member)

    def finish(self) -> None:
        for path, member in reversed(self._dirs):
            self._apply_attributes(path, member)

    def _host_path(self, name: str, *, follow_last: bool) -> Path:
        try:
            if follow_last:
                return resolve_in_root(self._root, name)
            parent, _, base = name.rpartition("/")
            return resolve_in_root(self._root, parent) / base
        except ContainerError:
            raise ArchiveError(
                f"archive entry {name!r}: too many levels of symbolic links"
            ) from None

    def _make_parents(self, path: Path, name: str) -> None:
        if path == self._root:
            return  # a directory entry that resolved to the root through a symlink
        missing: list[Path] = []
        parent = path.parent
        while parent != self._root and not os.path.lexists(parent):
            missing.append(parent)
            parent = parent.parent
        if not stat.S_ISDIR(os.lstat(parent).st_mode):
            raise ArchiveError(f"archive entry {name!r}: a parent is not a directory")
        for directory in reversed(missing):
            directory.mkdir(mode=0o700)
            if self._owner is not None:
                os.lchown(directory, *self._owner)
            os.chmod(directory, 0o755)

    def _clear(self, path: Path, *, keep_dir: bool) -> bool:
        """Remove what is at ``path`` (a later entry wins); True when a directory is kept."""
        try:
            mode = os.lstat(path).st_mode
        except FileNotFoundError:
            return False
        if stat.S_ISDIR(mode):
            if keep_dir:
                return True
            shutil.rmtree(path)
        else:
            os.unlink(path)
        return False

    def _create(self, path: Path, name: str, member: tarfile.TarInfo, tar: tarfile.TarFile) -> None:
        if member.isdir():
            path.mkdir(mode=0o700)
        elif member.isreg():
            self._write_regular(path, member, tar)
        elif member.issym():
            os.symlink(member.linkname, path)
        elif member.islnk():
            self._hardlink(path, name, member)
        elif member.ischr() or member.isblk():
            kind = stat.S_IFCHR if member.ischr() else stat.S_IFBLK
            os.mknod(path, kind | 0o600, os.makedev(member.devmajor, member.devminor))
        elif member.isfifo():
            os.mkfifo(path, 0o600)
        else:
            raise ArchiveError(f"archive entry {name!r} has unsupported type {member.type!r}")

    def _write_regular(self, path: Path, member: tarfile.TarInfo, tar: tarfile.TarFile) -> None:
        source = tar.extractfile(member)
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        with os.fdopen(os.open(path, flags, 0o600), "wb") as out:
            if source is not None:
                shutil.copyfileobj(source, out, _COPY_BLOCK)

    def _hardlink(self, path: Path, name: str, member: tarfile.TarInfo) -> None:
        target_name = _clean_name(member.linkname)
        if not target_name:
            raise ArchiveError(f"archive hardlink {name!r} points at the extraction root")
        target = self._host_path(target_name, follow_last=False)
        try:
            target_mode = os.lstat(target).st_mode
        except (FileNotFoundError, NotADirectoryError):
            raise ArchiveError(
                f"archive hardlink {name!r} points at missing {member.linkname!r}"
            ) from None
        if stat.S_ISDIR(target_mode):
            raise ArchiveError(f"archive hardlink {name!r} points at a directory")
        os.link(target, path, follow_symlinks=False)

    def _apply_attributes(self, path: Path, member: tarfile.TarInfo) -> None:
        uid, gid = self._owner if self._owner is not None else (member.uid, member.gid)
        current = os.lstat(path)
        if (current.st_uid, current.st_gid) != (uid, gid):
            os.lchown(path, uid, gid)
        # Not through a symlink (a hardlink to one is one): chmod would follow it.
        if not stat.S_ISLNK(current.st_mode):
            os.chmod(path, member.mode & 0o7777)  # after chown, which clears set-id bits
        for key, value in member.pax_headers.items():
            if key.startswith(_XATTR_PAX_PREFIX):
                data = value.encode("utf-8", "surrogateescape")
                set_xattr(path, key[len(_XATTR_PAX_PREFIX) :], data)
        mtime = _mtime_ns(member)
        os.utime(path, ns=(mtime, mtime), follow_symlinks=False)
