"""Reading a tar stream entry by entry, within bounds, whatever the bytes say.

Python's ``tarfile`` was not made for hostile input: it reads a PAX header of any
declared size into memory, loops on some sparse maps until a declared count is
reached even at end of file, and lets ``ValueError``/``IndexError`` out. Layers and
``ADD`` archives come from registries, mirrors and build contexts, so this reader
bounds everything an entry may make it hold (extension headers 1 MiB, as Go's
``archive/tar``; sparse maps 64 Ki segments), always advances, and raises only
:class:`~lazybuild.untar.tarheader.TarFormatError`.

An entry's data is read through :meth:`TarReader.data` before asking for the next
entry; whatever is not read is skipped.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import BinaryIO

from lazybuild.untar import tarheader as th
from lazybuild.untar.tarheader import BLOCK, TarFormatError

MAX_EXTENSION_SIZE = 1 << 20  # PAX and GNU long-name data, as Go's archive/tar
MAX_SPARSE_SEGMENTS = 1 << 16
_PIECE = 1 << 20
_XATTR_PREFIX = "SCHILY.xattr."

# What an entry is, after V7's and GNU's spellings are folded into one.
FILE = "file"
DIRECTORY = "directory"
SYMLINK = "symlink"
HARDLINK = "hardlink"
CHAR_DEVICE = "char-device"
BLOCK_DEVICE = "block-device"
FIFO = "fifo"

_KINDS = {
    th.REGULAR: FILE,
    th.REGULAR_V7: FILE,
    th.CONTIGUOUS: FILE,
    th.GNU_SPARSE: FILE,
    th.DIRECTORY: DIRECTORY,
    th.SYMLINK: SYMLINK,
    th.HARDLINK: HARDLINK,
    th.CHAR_DEVICE: CHAR_DEVICE,
    th.BLOCK_DEVICE: BLOCK_DEVICE,
    th.FIFO: FIFO,
}


@dataclass(frozen=True)
class TarEntry:
    """One entry, with its PAX and GNU extensions applied."""

    name: str  # as the archive spells it; undecodable bytes kept as surrogates
    kind: str  # FILE, DIRECTORY, SYMLINK, HARDLINK, CHAR_DEVICE, BLOCK_DEVICE, FIFO
    mode: int  # permission and set-id bits only
    uid: int
    gid: int
    mtime_ns: int
    linkname: str
    devmajor: int
    devminor: int
    size: int  # the file's size (a sparse file's apparent size)
    xattrs: dict[str, bytes] = field(default_factory=dict)
    # A sparse file's data segments, (offset, length) in order; None for a plain file.
    sparse: tuple[tuple[int, int], ...] | None = None


class TarReader:
    """The entries of the uncompressed tar ``stream``, read strictly in order."""

    def __init__(self, stream: BinaryIO) -> None:
        self._stream = stream
        self._remaining = 0  # bytes of the current entry's data not read yet
        self._padding = 0
        self._segments: tuple[tuple[int, int], ...] = ()
        self._current: TarEntry | None = None

    def __iter__(self) -> Iterator[TarEntry]:
        while True:
            self._skip_rest()
            entry = self._next_entry()
            if entry is None:
                return
            self._current = entry
            yield entry

    def data(self) -> Iterator[tuple[int, bytes]]:
        """The current entry's data as ``(offset in the file, bytes)`` pieces; a sparse
        file's holes are not among them."""
        entry = self._current
        if entry is None or entry.kind != FILE:
            return
        self._current = None
        for offset, length in self._segments:
            position, end = offset, offset + length
            while position < end:
                piece = self._read_exact(min(end - position, _PIECE), "its data")
                self._remaining -= len(piece)
                yield position, piece
                position += len(piece)

    # -- headers ------------------------------------------------------------------

    def _next_entry(self) -> TarEntry | None:
        pax: dict[str, str] = {}
        long_name: bytes | None = None
        long_link: bytes | None = None
        while True:
            block = self._stream.read(BLOCK)
            if not block:
                return None  # end of file at a header boundary: the end, as Go says
            if len(block) < BLOCK:
                block += self._read_exact(BLOCK - len(block), "a header")
            if block == th.ZERO_BLOCK:
                return None
            header = th.parse_header(block)
            if header.typeflag in (th.PAX_LOCAL, th.PAX_GLOBAL, th.GNU_LONG_NAME, th.GNU_LONG_LINK):
                data = self._extension_data(header.size)
                if header.typeflag == th.PAX_LOCAL:
                    pax.update(th.parse_pax_records(data))
                elif header.typeflag == th.GNU_LONG_NAME:
                    long_name = data.split(b"\0", 1)[0]
                elif header.typeflag == th.GNU_LONG_LINK:
                    long_link = data.split(b"\0", 1)[0]
                else:
                    th.parse_pax_records(data)  # global headers are checked, then ignored
                continue
            return self._entry(header, pax, long_name, long_link)

    def _extension_data(self, size: int) -> bytes:
        if size > MAX_EXTENSION_SIZE:
            raise TarFormatError(
                f"a tar extension header of {size} bytes (at most {MAX_EXTENSION_SIZE})"
            )
        data = self._read_exact(size, "an extension header")
        self._read_exact(_padding(size), "an extension header")
        return data

    def _entry(
        self,
        header: th.RawHeader,
        pax: dict[str, str],
        long_name: bytes | None,
        long_link: bytes | None,
    ) -> TarEntry:
        # A GNU long name or link wins over PAX, as in Go's reader.
        if long_name is not None:
            name = _text(long_name)
        else:
            name = pax.get("GNU.sparse.name", pax.get("path", _text(header.name)))
        if long_link is not None:
            linkname = _text(long_link)
        else:
            linkname = pax.get("linkpath", _text(header.linkname))
        kind = _KINDS.get(header.typeflag)
        if kind is None:
            raise TarFormatError(
                f"{_shown(name)} has unsupported tar entry type {header.typeflag!r}"
            )
        if header.typeflag == th.REGULAR_V7 and name.endswith("/"):
            kind = DIRECTORY  # V7 had no directory type
        for text, what in ((name, "name"), (linkname, "link target")):
            if "\0" in text:
                raise TarFormatError(f"a tar entry's {what} holds a NUL byte: {_shown(text)}")
        if not name:
            raise TarFormatError("a tar entry with an empty name")
        stored = th.decimal_int(pax["size"], "size") if "size" in pax else header.size
        uid = th.owner_id(th.decimal_int(pax["uid"], "uid"), "uid") if "uid" in pax else header.uid
        gid = th.owner_id(th.decimal_int(pax["gid"], "gid"), "gid") if "gid" in pax else header.gid
        if "mtime" in pax:
            mtime_ns = th.pax_time_ns(pax["mtime"])
        else:
            mtime_ns = th.bounded_time_ns(header.mtime * 1_000_000_000)
        xattrs = {
            key[len(_XATTR_PREFIX) :]: value.encode("utf-8", "surrogateescape")
            for key, value in pax.items()
            if key.startswith(_XATTR_PREFIX)
        }
        if kind != FILE:
            # Header-only types have no data whatever their size field says (Go's reader
            # and tarfile both ignore it): the next header follows at once.
            self._set_data(0, ())
            return TarEntry(
                name, kind, header.mode, uid, gid, mtime_ns, linkname,
                header.devmajor, header.devminor, 0, xattrs,
            )  # fmt: skip
        sparse, size = self._sparse_layout(header, pax, stored, name)
        return TarEntry(
            name, kind, header.mode, uid, gid, mtime_ns, linkname,
            header.devmajor, header.devminor, size, xattrs, sparse,
        )  # fmt: skip

    # -- sparse files -------------------------------------------------------------

    def _sparse_layout(
        self, header: th.RawHeader, pax: dict[str, str], stored: int, name: str
    ) -> tuple[tuple[tuple[int, int], ...] | None, int]:
        """The data segments and apparent size; sets up the data reader."""
        if header.typeflag == th.GNU_SPARSE:
            segments = self._old_gnu_sparse_map(header)
            size = th.non_negative(th.number(header.block[483:495], "realsize"), "realsize")
        elif pax.get("GNU.sparse.major") == "1" and pax.get("GNU.sparse.minor") == "0":
            segments, map_bytes = self._pax_sparse_map_in_data(stored)
            stored -= map_bytes
            size = th.decimal_int(pax.get("GNU.sparse.realsize", ""), "sparse size")
        elif "GNU.sparse.map" in pax:
            segments = _pairs(pax["GNU.sparse.map"].split(","))
            size = th.decimal_int(pax.get("GNU.sparse.size", ""), "sparse size")
        elif any(key.startswith("GNU.sparse.") for key in pax):
            raise TarFormatError(f"{_shown(name)} is a sparse file in a format not supported")
        else:
            self._set_data(stored, ((0, stored),) if stored else ())
            return None, stored
        _check_segments(segments, size, stored, name)
        self._set_data(stored, tuple((o, n) for o, n in segments if n))
        return tuple(segments), size

    def _old_gnu_sparse_map(self, header: th.RawHeader) -> list[tuple[int, int]]:
        fields: list[bytes] = []
        block, start, count, extended_at = header.block, 386, 4, 482
        while True:
            for index in range(count):
                entry = block[start + 24 * index : start + 24 * index + 24]
                if entry[0] == 0:
                    break
                fields += (entry[:12], entry[12:])
            if not block[extended_at]:
                break
            if len(fields) > 2 * MAX_SPARSE_SEGMENTS:
                raise TarFormatError(f"a sparse map of over {MAX_SPARSE_SEGMENTS} segments")
            block = self._read_exact(BLOCK, "a sparse map")
            start, count, extended_at = 0, 21, 504
        numbers = [th.non_negative(th.number(f, "sparse map"), "sparse map") for f in fields]
        return list(zip(numbers[0::2], numbers[1::2], strict=True))

    def _pax_sparse_map_in_data(self, stored: int) -> tuple[list[tuple[int, int]], int]:
        """PAX 1.0: decimal lines at the start of the data, padded to a block."""
        text = b""
        consumed = 0
        fields: list[bytes] = []
        wanted: int | None = None
        while wanted is None or len(fields) < wanted:
            if consumed + BLOCK > stored:
                raise TarFormatError("a sparse map runs past its entry's data")
            text += self._read_exact(BLOCK, "a sparse map")
            consumed += BLOCK
            *complete, text = text.split(b"\n")
            fields += complete
            if wanted is None and fields:
                count = th.decimal_int(fields[0].decode("ascii", "replace"), "sparse map")
                if count > MAX_SPARSE_SEGMENTS:
                    raise TarFormatError(f"a sparse map of {count} segments")
                wanted = 1 + 2 * count
            if (wanted is None or len(fields) < wanted) and len(text) > 64:
                raise TarFormatError("a malformed sparse map")  # a number that never ends
        # What follows the last number in its block is padding.
        return _pairs([f.decode("ascii", "replace") for f in fields[1:wanted]]), consumed

    # -- bytes ----------------------------------------------------------------------

    def _set_data(self, stored: int, segments: tuple[tuple[int, int], ...]) -> None:
        self._remaining = stored
        self._padding = _padding(stored)
        self._segments = segments

    def _skip_rest(self) -> None:
        self._current = None
        left = self._remaining + self._padding
        self._remaining = self._padding = 0
        while left:
            piece = self._stream.read(min(left, _PIECE))
            if not piece:
                raise TarFormatError("the tar stream ends inside an entry (damaged or cut short)")
            left -= len(piece)

    def _read_exact(self, count: int, what: str) -> bytes:
        data = self._stream.read(count)
        while len(data) < count:
            more = self._stream.read(count - len(data))
            if not more:
                raise TarFormatError(f"the tar stream ends inside {what} (damaged or cut short)")
            data += more
        return data


def _padding(size: int) -> int:
    return -size % BLOCK


def _text(raw: bytes) -> str:
    return raw.decode("utf-8", "surrogateescape")


def _shown(name: str) -> str:
    return repr(name[:200])


def _pairs(fields: list[str]) -> list[tuple[int, int]]:
    if len(fields) % 2 or len(fields) > 2 * MAX_SPARSE_SEGMENTS:
        raise TarFormatError("a malformed sparse map")
    numbers = [th.decimal_int(f, "sparse map") for f in fields]
    return list(zip(numbers[0::2], numbers[1::2], strict=True))


def _check_segments(segments: list[tuple[int, int]], size: int, stored: int, name: str) -> None:
    """In order, not overlapping, inside the file, and exactly the data stored."""
    end = 0
    for offset, length in segments:
        if offset < end or offset + length > size:
            raise TarFormatError(f"{_shown(name)} has a sparse map out of order or out of range")
        end = offset + length
    if sum(length for _, length in segments) != stored:
        raise TarFormatError(f"{_shown(name)} has a sparse map that does not match its data")
