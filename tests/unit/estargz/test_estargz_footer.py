from __future__ import annotations

import gzip

import pytest

from lazybuild.errors import FormatError
from lazybuild.estargz import (
    FOOTER_SIZE,
    LEGACY_FOOTER_SIZE,
    Footer,
    encode_footer,
    encode_legacy_footer,
    parse_footer,
)

# Byte layouts from the spec (§1.6) for tocOffset 0x1234.
ESTARGZ_1234 = bytes.fromhex(
    "1f 8b 08 04 00 00 00 00 00 ff 1a 00 53 47 16 00"
    " 30 30 30 30 30 30 30 30 30 30 30 30 31 32 33 34"
    " 53 54 41 52 47 5a 01 00 00 ff ff 00 00 00 00 00 00 00 00"
)
LEGACY_1234 = bytes.fromhex(
    "1f8b08040000000000ff1600" + b"0000000000001234STARGZ".hex() + "010000ffff" + "00" * 8
)


def test_estargz_footer_bytes() -> None:
    assert encode_footer(0x1234) == ESTARGZ_1234
    assert len(ESTARGZ_1234) == FOOTER_SIZE
    assert gzip.decompress(ESTARGZ_1234) == b""


def test_legacy_footer_bytes() -> None:
    assert encode_legacy_footer(0x1234) == LEGACY_1234
    assert len(LEGACY_1234) == LEGACY_FOOTER_SIZE
    assert gzip.decompress(LEGACY_1234) == b""


@pytest.mark.parametrize("offset", [0, 1, 0x1234, 2**40 + 17, 2**63 - 1])
def test_round_trip_both_kinds(offset: int) -> None:
    prefix = b"\x00" * 100  # parse_footer gets a longer tail than the footer
    assert parse_footer(prefix + encode_footer(offset)) == Footer(offset, FOOTER_SIZE, legacy=False)
    assert parse_footer(prefix + encode_legacy_footer(offset)) == Footer(
        offset, LEGACY_FOOTER_SIZE, legacy=True
    )
    assert parse_footer(encode_legacy_footer(offset)).legacy  # exactly 47 bytes


def test_offset_out_of_range_is_refused() -> None:
    with pytest.raises(ValueError):
        encode_footer(-1)
    with pytest.raises(ValueError):
        encode_footer(2**63)


@pytest.mark.parametrize(
    "tail",
    [
        b"",
        b"\x1f\x8b" * 10,
        b"\x00" * 51,
        encode_footer(5)[:-1],  # truncated
        encode_footer(5).replace(b"STARGZ", b"STARGX"),
        encode_footer(5).replace(b"SG", b"XG"),
        encode_footer(0xABC).replace(b"0abc", b"0xbc"),  # not hex
        encode_footer(0xABC).replace(b"0abc", b"+abc"),
        encode_footer(5)[:-4] + b"\x01\x00\x00\x00",  # non-empty ISIZE
    ],
)
def test_bad_footers(tail: bytes) -> None:
    with pytest.raises(FormatError):
        parse_footer(tail)
