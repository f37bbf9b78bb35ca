"""The fixed-size gzip member that ends every (e)stargz blob and says where the TOC starts.

Both footers are empty gzip members whose Extra field carries the TOC offset as
``%016x`` followed by ``STARGZ``:

* eStargz (51 bytes): the Extra field is a proper RFC 1952 subfield ``SG`` + LEN 22;
* legacy stargz (47 bytes): the 22 bytes are the raw Extra field, without a subfield header.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from lazybuild.errors import FormatError

FOOTER_SIZE = 51
LEGACY_FOOTER_SIZE = 47

_MAGIC = b"STARGZ"
_OFFSET_DIGITS = 16
_PAYLOAD_SIZE = _OFFSET_DIGITS + len(_MAGIC)  # 22
# ID1 ID2 CM=deflate FLG=FEXTRA MTIME=0 XFL=0 OS=255 (what Go's gzip writer emits)
_GZIP_HEADER = b"\x1f\x8b\x08\x04\x00\x00\x00\x00\x00\xff"
# An empty final stored block, then CRC32 and ISIZE of the empty payload.
_EMPTY_DEFLATE_AND_TRAILER = b"\x01\x00\x00\xff\xff" + b"\x00" * 8
_SUBFIELD_HEADER = b"SG" + struct.pack("<H", _PAYLOAD_SIZE)


@dataclass(frozen=True)
class Footer:
    toc_offset: int
    size: int
    legacy: bool


def _offset_payload(toc_offset: int) -> bytes:
    if not 0 <= toc_offset < 1 << 63:
        raise ValueError(f"TOC offset {toc_offset} does not fit a footer")
    return b"%016x" % toc_offset + _MAGIC


def encode_footer(toc_offset: int) -> bytes:
    """The 51-byte eStargz footer pointing at ``toc_offset``."""
    extra = _SUBFIELD_HEADER + _offset_payload(toc_offset)
    return _GZIP_HEADER + struct.pack("<H", len(extra)) + extra + _EMPTY_DEFLATE_AND_TRAILER


def encode_legacy_footer(toc_offset: int) -> bytes:
    """The 47-byte legacy (CRFS) stargz footer, for tests and for re-encoding old layers."""
    extra = _offset_payload(toc_offset)
    return _GZIP_HEADER + struct.pack("<H", len(extra)) + extra + _EMPTY_DEFLATE_AND_TRAILER


def _parse_offset_payload(payload: bytes) -> int | None:
    if len(payload) != _PAYLOAD_SIZE or not payload.endswith(_MAGIC):
        return None
    digits = payload[:_OFFSET_DIGITS]
    try:
        text = digits.decode("ascii")
        offset = int(text, 16)
    except (UnicodeDecodeError, ValueError):
        return None
    # int() accepts "+", "_" and whitespace; the writer only ever emits hex digits.
    if not all(c in "0123456789abcdefABCDEF" for c in text) or offset >= 1 << 63:
        return None
    return offset


def _gzip_extra_field(member: bytes) -> bytes | None:
    """The Extra field of a gzip member that must be exactly ``member`` long and empty."""
    if len(member) < 12 or member[:3] != b"\x1f\x8b\x08":
        return None
    flags = member[3]
    if flags != 0x04:  # FEXTRA only: both writers set nothing else
        return None
    (xlen,) = struct.unpack_from("<H", member, 10)
    end = 12 + xlen
    if member[end:] != _EMPTY_DEFLATE_AND_TRAILER:
        return None
    return member[12:end]


def _parse_estargz(window: bytes) -> int | None:
    extra = _gzip_extra_field(window)
    if extra is None or len(extra) < 4 or extra[:4] != _SUBFIELD_HEADER:
        return None
    return _parse_offset_payload(extra[4:])


def _parse_legacy(window: bytes) -> int | None:
    extra = _gzip_extra_field(window)
    if extra is None:
        return None
    return _parse_offset_payload(extra)


def parse_footer(tail: bytes) -> Footer:
    """Find the footer at the end of ``tail`` (the last >= 51 bytes of a blob, or all of it).

    The eStargz form is tried first, as the reference reader does; a legacy footer
    fails that parse because the 51-byte window then starts 4 bytes too early.
    """
    if len(tail) >= FOOTER_SIZE:
        offset = _parse_estargz(tail[-FOOTER_SIZE:])
        if offset is not None:
            return Footer(toc_offset=offset, size=FOOTER_SIZE, legacy=False)
    if len(tail) >= LEGACY_FOOTER_SIZE:
        offset = _parse_legacy(tail[-LEGACY_FOOTER_SIZE:])
        if offset is not None:
            return Footer(toc_offset=offset, size=LEGACY_FOOTER_SIZE, legacy=True)
    if len(tail) < LEGACY_FOOTER_SIZE:
        raise FormatError(
            f"blob tail of {len(tail)} bytes is too short for a stargz footer "
            f"({LEGACY_FOOTER_SIZE} or {FOOTER_SIZE} bytes)"
        )
    raise FormatError(
        f"no eStargz ({FOOTER_SIZE}-byte) or legacy stargz ({LEGACY_FOOTER_SIZE}-byte) footer "
        f"at the end of the blob (last bytes: {tail[-16:].hex()})"
    )
