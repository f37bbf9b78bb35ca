"""Extracting the TOC JSON from the TOC gzip member (a tiny tar reader for one entry)."""

from __future__ import annotations

from lazybuild.errors import FormatError
from lazybuild.estargz.gzipmembers import inflate_first_member
from lazybuild.estargz.toc import TOC_TAR_NAME

BLOCK = 512
# Far above any real TOC (containers/storage gives up at 150 MiB), low enough to stop a bomb.
MAX_TOC_MEMBER_SIZE = 1 << 30


def _octal_or_base256(field: bytes, what: str, where: str) -> int:
    if field and field[0] & 0x80:  # GNU base-256 for values that do not fit in octal
        value = int.from_bytes(bytes([field[0] & 0x7F]) + field[1:], "big")
        return value
    text = field.split(b"\0", 1)[0].strip(b" ")
    try:
        return int(text, 8) if text else 0
    except ValueError:
        raise FormatError(f"{where}: tar header {what} field {field!r} is not octal") from None


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
    records: dict[str, str] = {}
    pos = 0
    while pos < len(data):
        space = data.find(b" ", pos)
        try:
            length = int(data[pos:space])
        except ValueError:
            raise FormatError(f"{where}: malformed PAX record in TOC member") from None
        record = data[space + 1 : pos + length - 1]
        key, _, value = record.partition(b"=")
        records[key.decode("utf-8", "surrogateescape")] = value.decode("utf-8", "surrogateescape")
        pos += length
    return records


def extract_toc_json(member: bytes, where: str) -> bytes:
    """The JSON bytes of the ``stargz.index.json`` tar entry in the compressed TOC member."""
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
        if typeflag == b"x":  # a PAX header describing the next entry
            pax = _pax_records(tar[data_start : data_start + size], where)
            pos = data_start + -(-size // BLOCK) * BLOCK
            continue
        break
    name = pax.get("path", _header_name(header))
    if "size" in pax:
        size = int(pax["size"])
    if name != TOC_TAR_NAME or typeflag not in (b"0", b"\0"):
        raise FormatError(f"{where}: first entry of the TOC member is {name!r}, not {TOC_TAR_NAME}")
    if data_start + size > len(tar):
        raise FormatError(f"{where}: TOC JSON of {size} bytes is truncated")
    return tar[data_start : data_start + size]
