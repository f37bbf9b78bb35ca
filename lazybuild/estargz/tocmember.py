"""Extracting the TOC JSON from the TOC gzip member (a tiny tar reader for one entry).

The member comes from the registry before anything in it is verified (the TOC digest
covers the JSON, not the tar around it), so every field is checked for what it can
be and every loop advances: hostile bytes end in a ``FormatError``, never a hang.
"""

from __future__ import annotations

import re

from lazybuild.errors import FormatError
from lazybuild.estargz.gzipmembers import inflate_first_member
from lazybuild.estargz.toc import TOC_TAR_NAME

BLOCK = 512
# The TOC JSON is refused above this size. A 100,000-file layer's TOC is 20-36 MB of
# JSON; stargz-snapshotter sets no limit and containers/storage gives up at 150 MiB.
# Decoding costs ~5 bytes of memory per JSON byte for a real TOC and up to ~35 for a
# hostile one (``[{},{},...]``), so 64 MiB bounds that at a few GiB at worst, with
# room for twice the largest real layers seen.
MAX_TOC_JSON_SIZE = 64 << 20
# The tar around the JSON: a header, maybe a PAX header, padding, end-of-archive.
MAX_TOC_MEMBER_SIZE = MAX_TOC_JSON_SIZE + (64 << 10)
# The compressed TOC member: the tar stored without compression (level 0) plus
# deflate's and gzip's framing still fits.
MAX_TOC_COMPRESSED_SIZE = MAX_TOC_MEMBER_SIZE + (1 << 20)
# A PAX record's length prefix: far more digits than any record in a 64 MiB member.
_MAX_PAX_LENGTH_DIGITS = 12
_OCTAL = re.compile(rb"[0-7]+")
_DECIMAL = re.compile(r"[0-9]{1,19}")


def _octal_or_base256(field: bytes, what: str, where: str) -> int:
    if field and field[0] & 0x80:  # GNU base-256 for values that do not fit in octal
        if field[0] & 0x40:  # the sign bit: a negative value
            raise FormatError(f"{where}: tar header {what} field is negative")
        return int.from_bytes(bytes([field[0] & 0x7F]) + field[1:], "big")
    text = field.split(b"\0", 1)[0].strip(b" ")
    if not text:
        return 0
    if _OCTAL.fullmatch(text) is None:
        raise FormatError(f"{where}: tar header {what} field {field!r} is not octal")
    return int(text, 8)


def _check_header(header: bytes, where: str) -> None:
    stored = _octal_or_base256(header[148:156], "checksum", where)
    computed = sum(header[:148]) + 8 * 0x20 + sum(header[156:])
    if stored != computed:
        raise FormatError(f"{where}: TOC tar header checksum mismatch")


def _header_name(header: bytes) -> str:
    name = header[:100].split(b"\0", 1)[0]
    if header[257:262] == b"ustar":
        prefix = header[345:500].split(b"\0", 1)[0]
        if prefix:
            name = prefix + b"/" + name
    return name.decode("utf-8", "surrogateescape")


def _pax_records(data: bytes, where: str) -> dict[str, str]:
    """``"%d %s=%s\\n"`` records, as Go's archive/tar reads them; anything else is an error."""
    records: dict[str, str] = {}
    pos = 0
    while pos < len(data):
        space = data.find(b" ", pos, pos + _MAX_PAX_LENGTH_DIGITS + 1)
        digits = data[pos:space] if space > pos else b""
        if not digits.isdigit():
            raise FormatError(f"{where}: malformed PAX record length in TOC member")
        length = int(digits)
        end = pos + length
        # The record must hold at least its length, the space, "k=" and the newline,
        # which also makes every iteration advance.
        if length < len(digits) + 4 or end > len(data):
            raise FormatError(f"{where}: PAX record of length {length} does not fit")
        if data[end - 1 : end] != b"\n":
            raise FormatError(f"{where}: PAX record does not end in a newline")
        key, equals, value = data[space + 1 : end - 1].partition(b"=")
        if not equals or not key:
            raise FormatError(f"{where}: PAX record without a key")
        try:
            records[key.decode("utf-8")] = value.decode("utf-8")
        except UnicodeDecodeError:
            raise FormatError(f"{where}: PAX record that is not UTF-8") from None
        pos = end
    return records


def extract_toc_json(member: bytes, where: str) -> bytes:
    """The JSON bytes of the ``stargz.index.json`` tar entry in the compressed TOC member."""
    if len(member) > MAX_TOC_COMPRESSED_SIZE:
        raise FormatError(
            f"{where}: compressed TOC of {len(member)} bytes is over the "
            f"{MAX_TOC_COMPRESSED_SIZE >> 20} MiB limit"
        )
    tar = inflate_first_member(member, MAX_TOC_MEMBER_SIZE, where)
    pos = 0
    pax: dict[str, str] = {}
    while True:
        header = tar[pos : pos + BLOCK]
        if len(header) < BLOCK:
            raise FormatError(f"{where}: TOC member ends inside a tar header")
        _check_header(header, where)
        size = _octal_or_base256(header[124:136], "size", where)
        typeflag = header[156:157]
        data_start = pos + BLOCK
        if size > len(tar) - data_start:
            raise FormatError(f"{where}: tar entry of {size} bytes is truncated")
        if typeflag == b"x":  # a PAX header describing the next entry
            pax = _pax_records(tar[data_start : data_start + size], where)
            pos = data_start + -(-size // BLOCK) * BLOCK  # always past this header
            continue
        break
    name = pax.get("path", _header_name(header))
    if "size" in pax:
        if _DECIMAL.fullmatch(pax["size"]) is None:
            raise FormatError(f"{where}: PAX size {pax['size'][:40]!r} is not a decimal number")
        size = int(pax["size"])
    if name != TOC_TAR_NAME or typeflag not in (b"0", b"\0"):
        raise FormatError(
            f"{where}: first entry of the TOC member is {name[:120]!r}, not {TOC_TAR_NAME}"
        )
    if size > MAX_TOC_JSON_SIZE:
        raise FormatError(
            f"{where}: TOC JSON of {size} bytes is over the {MAX_TOC_JSON_SIZE >> 20} MiB limit"
        )
    if data_start + size > len(tar):
        raise FormatError(f"{where}: TOC JSON of {size} bytes is truncated")
    return tar[data_start : data_start + size]
