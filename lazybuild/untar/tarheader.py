"""One tar header block and PAX records, decoded from bytes (no I/O).

The formats are those Go's ``archive/tar`` reads, which is what Docker and BuildKit
extract with: V7, ustar, GNU (long names, old sparse maps) and PAX. Every field of a
header comes from bytes nobody vouched for, so every decoder here either returns a
value in range or raises :class:`TarFormatError`; nothing else escapes.
"""

from __future__ import annotations

import decimal
from dataclasses import dataclass

from lazybuild.errors import FormatError

BLOCK = 512
ZERO_BLOCK = bytes(BLOCK)

# Type flags (POSIX, GNU).
REGULAR = b"0"
REGULAR_V7 = b"\0"
HARDLINK = b"1"
SYMLINK = b"2"
CHAR_DEVICE = b"3"
BLOCK_DEVICE = b"4"
DIRECTORY = b"5"
FIFO = b"6"
CONTIGUOUS = b"7"  # a regular file for every extractor that exists
PAX_LOCAL = b"x"
PAX_GLOBAL = b"g"
GNU_LONG_NAME = b"L"
GNU_LONG_LINK = b"K"
GNU_SPARSE = b"S"

# Times outside what containerd's untar keeps become the epoch, as it does.
MAX_TIME_NS = 2**63 - 1
# 2**32 - 1 is "no change" to chown(2): an archive must not be able to say that.
MAX_ID = 2**32 - 2


class TarFormatError(FormatError):
    """A tar stream that is malformed, truncated or beyond the reader's bounds."""


@dataclass(frozen=True)
class RawHeader:
    """The fields of one header block, before PAX or GNU extensions apply."""

    name: bytes
    mode: int
    uid: int
    gid: int
    size: int
    mtime: int
    typeflag: bytes
    linkname: bytes
    devmajor: int
    devminor: int
    gnu: bool  # GNU's layout: no ustar prefix, old sparse map and realsize instead
    block: bytes  # the whole block, for the GNU sparse fields


def parse_header(block: bytes) -> RawHeader:
    """Decode a 512-byte header block (not a zero block)."""
    if len(block) != BLOCK:
        raise TarFormatError(f"a tar header of {len(block)} bytes")
    _check_checksum(block)
    magic = block[257:265]
    gnu = magic == b"ustar  \0"
    ustar = block[257:263] == b"ustar\0"
    name = _cstring(block[0:100])
    if ustar:
        # star puts atime and ctime after a shorter prefix and marks it at the end.
        prefix_end = 476 if block[508:512] == b"tar\0" else 500
        prefix = _cstring(block[345:prefix_end])
        if prefix:
            name = prefix + b"/" + name
    typeflag = block[156:157]
    has_devices = ustar or gnu
    return RawHeader(
        name=name,
        mode=number(block[100:108], "mode") & 0o7777,
        uid=owner_id(number(block[108:116], "uid"), "uid"),
        gid=owner_id(number(block[116:124], "gid"), "gid"),
        size=non_negative(number(block[124:136], "size"), "size"),
        mtime=number(block[136:148], "mtime"),
        typeflag=typeflag,
        linkname=_cstring(block[157:257]),
        devmajor=non_negative(number(block[329:337], "devmajor"), "devmajor") if has_devices else 0,
        devminor=non_negative(number(block[337:345], "devminor"), "devminor") if has_devices else 0,
        gnu=gnu,
        block=block,
    )


def _check_checksum(block: bytes) -> None:
    stored = number(block[148:156], "checksum")
    unsigned = sum(block) - sum(block[148:156]) + 8 * 0x20
    if stored == unsigned:
        return
    # Some old writers summed signed bytes: each byte of 0x80 and over counts 256 less.
    high = sum(1 for b in block[:148] if b >= 0x80) + sum(1 for b in block[156:] if b >= 0x80)
    if stored != unsigned - 256 * high:
        raise TarFormatError("a tar header with a wrong checksum (not a tar, or damaged)")


def _cstring(field: bytes) -> bytes:
    return field.split(b"\0", 1)[0]


def number(field: bytes, what: str) -> int:
    """A numeric header field: octal text, or GNU's base-256 when the top bit is set."""
    if field and field[0] & 0x80:
        # Two's complement, big-endian, the first byte's top bit only a marker.
        invert = 0xFF if field[0] & 0x40 else 0
        value = 0
        for index, raw in enumerate(field):
            byte = raw ^ invert
            value = (value << 8) | (byte & 0x7F if index == 0 else byte)
        if value >> 63:
            raise TarFormatError(f"a tar header's {what} field overflows")
        return ~value if invert else value
    text = field.split(b"\0", 1)[0].strip(b" ")
    if not text:
        return 0
    if any(c not in b"01234567" for c in text):
        raise TarFormatError(f"a tar header's {what} field is not a number: {field!r}")
    return int(text, 8)


def non_negative(value: int, what: str) -> int:
    if value < 0:
        raise TarFormatError(f"a tar header's {what} is negative ({value})")
    return value


def owner_id(value: int, what: str) -> int:
    if not 0 <= value <= MAX_ID:
        raise TarFormatError(f"a tar header's {what} {value} is out of range")
    return value


def decimal_int(text: str, what: str) -> int:
    """A PAX decimal integer: digits only, as Go's ``strconv.ParseInt`` after its checks."""
    if not text or not text.isascii() or not text.isdigit() or len(text) > 30:
        raise TarFormatError(f"a PAX {what} is not a number: {text[:40]!r}")
    return int(text)


def pax_time_ns(text: str) -> int:
    """A PAX time ("1234567890.123456789", maybe negative) in nanoseconds; out-of-range
    times are the epoch, as containerd's untar bounds them."""
    if len(text) > 64:
        raise TarFormatError(f"a PAX time is too long: {text[:40]!r}")
    try:
        value = decimal.Decimal(text)
    except decimal.InvalidOperation:
        raise TarFormatError(f"a PAX time is not a number: {text[:40]!r}") from None
    if not value.is_finite():
        raise TarFormatError(f"a PAX time is not a number: {text[:40]!r}")
    return bounded_time_ns(int(value.scaleb(9)))


def bounded_time_ns(nanoseconds: int) -> int:
    return nanoseconds if 0 <= nanoseconds <= MAX_TIME_NS else 0


def parse_pax_records(data: bytes) -> dict[str, str]:
    """``"%d %s=%s\\n"`` records; the last of a repeated key wins. Keys and values are
    decoded as UTF-8, undecodable bytes kept (``surrogateescape``)."""
    records: dict[str, str] = {}
    pos = 0
    while pos < len(data):
        space = data.find(b" ", pos, pos + 21)
        digits = data[pos:space] if space > pos else b""
        if not digits or not digits.isdigit():
            raise TarFormatError("a malformed PAX record (no length)")
        length = int(digits)
        end = pos + length
        # The length counts itself, the space, "k=v" and the newline: it always advances.
        if length <= len(digits) + 1 or end > len(data) or data[end - 1 : end] != b"\n":
            raise TarFormatError("a malformed PAX record (bad length)")
        key, equals, value = data[space + 1 : end - 1].partition(b"=")
        if not equals or not key:
            raise TarFormatError("a malformed PAX record (no key)")
        records[key.decode("utf-8", "surrogateescape")] = value.decode("utf-8", "surrogateescape")
        pos = end
    return records
