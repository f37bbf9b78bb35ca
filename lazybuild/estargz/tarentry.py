"""Re-encoding input tar headers and describing them as TOC entries (non-lossless mode)."""

from __future__ import annotations

import math
import tarfile
from datetime import UTC, datetime

from lazybuild.errors import FormatError
from lazybuild.estargz.tarinput import tar_name
from lazybuild.estargz.toc import TOCEntry

BLOCK = 512
END_OF_ARCHIVE = b"\0" * (2 * BLOCK)
XATTR_PAX_PREFIX = "SCHILY.xattr."
_PERMISSION_BITS = 0o7777

_TOC_TYPES = {
    tarfile.REGTYPE: "reg",
    tarfile.AREGTYPE: "reg",
    tarfile.CONTTYPE: "reg",
    tarfile.LNKTYPE: "hardlink",
    tarfile.SYMTYPE: "symlink",
    tarfile.DIRTYPE: "dir",
    tarfile.CHRTYPE: "char",
    tarfile.BLKTYPE: "block",
    tarfile.FIFOTYPE: "fifo",
}


def padding(size: int) -> bytes:
    return b"\0" * (-size % BLOCK)


def xattrs_of(info: tarfile.TarInfo) -> dict[str, bytes]:
    """Only ``SCHILY.xattr.*`` PAX records are xattrs; values are raw bytes."""
    return {
        key[len(XATTR_PAX_PREFIX) :]: value.encode("utf-8", "surrogateescape")
        for key, value in info.pax_headers.items()
        if key.startswith(XATTR_PAX_PREFIX)
    }


def format_modtime(mtime: float) -> str:
    """UTC RFC 3339 to the second; "" for the epoch itself, as Go's ``formatModtime``.

    The reference writer rounds to the nearest second; this one truncates, as ``stat``
    shows the time of the file Docker or containerd unpack from the same tar: a lazy
    mount of a layer written here then agrees with them to the second.
    """
    seconds = math.floor(mtime)
    if seconds == 0:
        return ""
    try:
        return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    except (OverflowError, OSError, ValueError):
        return ""  # beyond what RFC 3339 / datetime can express: leave it out


def encode_header(info: tarfile.TarInfo) -> bytes:
    """A fresh PAX-format header keeping name, link, mode, ids, names, mtime, devices, xattrs."""
    header = tarfile.TarInfo(tar_name(info))
    header.type = tarfile.REGTYPE if _TOC_TYPES.get(info.type) == "reg" else info.type
    header.size = info.size if header.type == tarfile.REGTYPE else 0
    header.mode = info.mode & _PERMISSION_BITS
    header.uid, header.gid = info.uid, info.gid
    header.uname, header.gname = info.uname, info.gname
    header.mtime = info.mtime
    header.linkname = info.linkname
    header.devmajor, header.devminor = info.devmajor, info.devminor
    header.pax_headers = {
        k: v for k, v in info.pax_headers.items() if k.startswith(XATTR_PAX_PREFIX)
    }
    try:
        return header.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")
    except (ValueError, tarfile.HeaderError) as error:
        raise FormatError(f"input tar: cannot re-encode header of {info.name!r}: {error}") from None


def plain_file_header(name: str, size: int) -> bytes:
    """Header with only name, type and size set, as the reference writes landmarks and the TOC."""
    header = tarfile.TarInfo(name)
    header.size = size
    header.mode = 0
    header.mtime = 0
    return header.tobuf(tarfile.USTAR_FORMAT, "utf-8", "strict")


class TOCEntryFactory:
    """Builds the TOC entry of each header; remembers which user/group names were written,
    because the reference writes a name only when it changes for that uid/gid."""

    def __init__(self) -> None:
        self._user_names: dict[int, str] = {}
        self._group_names: dict[int, str] = {}

    @staticmethod
    def _name_if_changed(names: dict[int, str], owner: int, name: str) -> str:
        if not name or names.get(owner) == name:
            return ""
        names[owner] = name
        return name

    def entry_for(self, info: tarfile.TarInfo) -> TOCEntry:
        entry_type = _TOC_TYPES[info.type]
        entry = TOCEntry(
            name=tar_name(info),
            type=entry_type,
            modtime=format_modtime(info.mtime),
            mode=info.mode & _PERMISSION_BITS,
            uid=info.uid,
            gid=info.gid,
            user_name=self._name_if_changed(self._user_names, info.uid, info.uname),
            group_name=self._name_if_changed(self._group_names, info.gid, info.gname),
            xattrs=xattrs_of(info),
        )
        if entry_type in ("hardlink", "symlink"):
            entry.link_name = info.linkname
        elif entry_type in ("char", "block"):
            entry.dev_major, entry.dev_minor = info.devmajor, info.devminor
        elif entry_type == "reg":
            entry.size = info.size
        return entry
