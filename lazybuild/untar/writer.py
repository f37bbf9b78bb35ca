"""The one tar writer (the extractor's counterpart): every tar lazybuild makes of a
directory goes through here (an overlayfs upper as a layer, ``snapshot.diff``, which
the daemon also sends a ``type=local`` output as; the root filesystem for
``type=tar``, ``exporter.rootfstar``; a build context and a local cache sent to a
daemon, ``daemon.buildclient``).

What they share, so that one tree always gives the same bytes:

- :class:`TarWriter`: a PAX stream (``tarfile``'s ``w|``), end-of-archive blocks
  written on a clean exit only; regular files with several names written once, later
  names as hardlinks to the first (:meth:`TarWriter.link_to_earlier`);
- :func:`stat_header`: an ``lstat`` as a header: numeric owners without user or group
  names, permission bits, the kind (directory, regular, symlink, devices, fifo; none
  for a socket), size, and xattrs as sorted ``SCHILY.xattr.*`` PAX records without
  overlayfs's own (:func:`pax_xattrs`), read with :func:`read_xattrs`;
- :func:`depth_first`: a walk that visits each directory's entries right after it,
  iteratively, so depth is not bounded by recursion.

What differs stays with the caller: which names, in which order, which mtime (whole
seconds, clamped, or exact), and what a failure is called.
"""

from __future__ import annotations

import errno
import os
import stat
import tarfile
from collections.abc import Callable, Iterable, Mapping
from typing import IO, TypeVar

__all__ = [
    "OVERLAY_XATTR_PREFIX",
    "TarWriter",
    "depth_first",
    "pax_xattrs",
    "read_xattrs",
    "stat_header",
]

OVERLAY_XATTR_PREFIX = "trusted.overlay."
_PAX_XATTR = "SCHILY.xattr."

T = TypeVar("T")


class TarWriter:
    """A PAX tar written to ``out`` as a stream; use it as a context manager.

    ``link_xattrs``: whether a hardlink entry keeps the xattr records of the header it
    replaces (the file's own entry always has them).
    """

    def __init__(self, out: IO[bytes], *, link_xattrs: bool = True) -> None:
        # Closed (end-of-archive blocks written) by __exit__.
        self._tar = tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT)  # noqa: SIM115
        self._link_xattrs = link_xattrs
        # (st_dev, st_ino) of a regular file with several names -> its first name.
        self._first_names: dict[tuple[int, int], str] = {}

    def __enter__(self) -> TarWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self._tar.__exit__(*exc)  # type: ignore[arg-type]

    def add(self, header: tarfile.TarInfo, content: IO[bytes] | None = None) -> None:
        """Write ``header`` and, for a regular file, ``header.size`` bytes of ``content``."""
        self._tar.addfile(header, content)

    def link_to_earlier(self, header: tarfile.TarInfo, info: os.stat_result) -> bool:
        """For a regular file with several names: when an earlier entry was its inode,
        ``header`` is written as a hardlink to that entry's name and True is returned;
        otherwise its name is remembered for the names to come."""
        if not stat.S_ISREG(info.st_mode) or info.st_nlink <= 1:
            return False
        key = (info.st_dev, info.st_ino)
        first = self._first_names.get(key)
        if first is None:
            self._first_names[key] = header.name
            return False
        header.type, header.linkname, header.size = tarfile.LNKTYPE, first, 0
        if not self._link_xattrs:
            header.pax_headers = {}
        self.add(header)
        return True


def stat_header(
    name: str,
    info: os.stat_result,
    *,
    mtime: float,
    linkname: str = "",
    xattrs: Mapping[str, bytes] | None = None,
    owner: tuple[int, int] | None = None,
) -> tarfile.TarInfo | None:
    """``info`` (an ``lstat``) as the header of entry ``name``; None for a kind no tar
    holds (a socket). ``linkname`` is a symlink's target; ``owner`` replaces the file's."""
    mode = info.st_mode
    header = tarfile.TarInfo(name)
    if stat.S_ISDIR(mode):
        header.type = tarfile.DIRTYPE
    elif stat.S_ISREG(mode):
        header.type, header.size = tarfile.REGTYPE, info.st_size
    elif stat.S_ISLNK(mode):
        header.type, header.linkname = tarfile.SYMTYPE, linkname
    elif stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        header.type = tarfile.CHRTYPE if stat.S_ISCHR(mode) else tarfile.BLKTYPE
        header.devmajor, header.devminor = os.major(info.st_rdev), os.minor(info.st_rdev)
    elif stat.S_ISFIFO(mode):
        header.type = tarfile.FIFOTYPE
    else:
        return None
    header.mode = stat.S_IMODE(mode)
    header.uid, header.gid = owner if owner is not None else (info.st_uid, info.st_gid)
    header.uname = header.gname = ""
    header.mtime = mtime
    if xattrs:
        header.pax_headers = pax_xattrs(xattrs)
    return header


def pax_xattrs(xattrs: Mapping[str, bytes]) -> dict[str, str]:
    """``SCHILY.xattr.*`` records in name order, overlayfs's own left out (tarfile
    encodes PAX values as UTF-8; surrogateescape keeps binary values whole)."""
    return {
        _PAX_XATTR + key: value.decode("utf-8", "surrogateescape")
        for key, value in sorted(xattrs.items())
        if not key.startswith(OVERLAY_XATTR_PREFIX)
    }


def read_xattrs(path: str | os.PathLike[str], *, skip_unreadable: bool = False) -> dict[str, bytes]:
    """The xattrs of ``path`` itself (a symlink is not followed); none on a filesystem
    without them. Otherwise a failure is an ``OSError``, unless ``skip_unreadable``:
    then an xattr that cannot be read is left out, and a listing that fails is none."""
    try:
        names = os.listxattr(path, follow_symlinks=False)
    except OSError as exc:
        if skip_unreadable or exc.errno in (errno.ENOTSUP, errno.EOPNOTSUPP):
            return {}
        raise
    values: dict[str, bytes] = {}
    for key in names:
        try:
            values[key] = os.getxattr(path, key, follow_symlinks=False)
        except OSError as exc:
            if skip_unreadable:
                continue
            if exc.errno in (errno.ENOTSUP, errno.EOPNOTSUPP):
                return {}
            raise
    return values


def depth_first(top: Iterable[T], visit: Callable[[T], Iterable[T] | None]) -> None:
    """``visit`` each item of ``top`` in order; when it returns items (a directory's
    entries), those are visited next, before the rest of ``top``. Iterative: a deep
    tree is not bounded by recursion."""
    stack = [iter(top)]
    while stack:
        for item in stack[-1]:
            below = visit(item)
            if below is not None:
                stack.append(iter(below))
            break
        else:
            stack.pop()
