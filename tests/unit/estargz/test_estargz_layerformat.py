from __future__ import annotations

import gzip
import io
import time

import pytest
import zstandard

from lazybuild.errors import FormatError
from lazybuild.estargz import LayerFormat, decompressed_stream, detect_format, encode_legacy_footer
from lazybuild.estargz.gzipmembers import compress_member, inflate_members
from tests.unit.estargz.esgz_helpers import Member, make_tar, write

GZ = "application/vnd.oci.image.layer.v1.tar+gzip"
ZST = "application/vnd.oci.image.layer.v1.tar+zstd"
TAR = "application/vnd.oci.image.layer.v1.tar"
SKIPPABLE_FRAME = b"\x50\x2a\x4d\x18\x05\x00\x00\x00hello"


def test_detect_format() -> None:
    blob, _ = write(make_tar([Member("a", data=b"x")]))
    assert detect_format(GZ, blob[:16], blob[-64:]) is LayerFormat.ESTARGZ
    legacy = blob[:-51] + encode_legacy_footer(10)
    assert detect_format(GZ, legacy[:16], legacy[-64:]) is LayerFormat.LEGACY_STARGZ
    plain_gz = gzip.compress(b"data")
    assert detect_format(GZ, plain_gz[:16], plain_gz[-64:]) is LayerFormat.GZIP
    zst = zstandard.ZstdCompressor().compress(b"data")
    assert detect_format(ZST, zst[:16], zst[-64:]) is LayerFormat.ZSTD
    chunked_tail = b"\x50\x2a\x4d\x18\x40\x00\x00\x00" + b"\0" * 56 + b"GNUlInUx"
    assert detect_format(ZST, zst[:16], chunked_tail) is LayerFormat.ZSTD_CHUNKED
    tar = make_tar([Member("a")])
    assert detect_format(TAR, tar[:16], tar[-64:]) is LayerFormat.UNCOMPRESSED
    with pytest.raises(FormatError, match="zstd-compressed"):
        detect_format(GZ, zst[:16], zst[-64:])
    with pytest.raises(FormatError, match="does not start with gzip"):
        detect_format(GZ, tar[:16], tar[-64:])


@pytest.mark.parametrize(
    "compress",
    [
        lambda d: d,
        lambda d: gzip.compress(d[:1000]) + gzip.compress(d[1000:]),
        lambda d: (
            zstandard.ZstdCompressor().compress(d[:700])
            + zstandard.ZstdCompressor().compress(d[700:])
        ),
        # zstd:chunked keeps its TOC and footer in skippable frames after the data
        lambda d: zstandard.ZstdCompressor().compress(d) + SKIPPABLE_FRAME,
    ],
    ids=["tar", "gzip-members", "zstd-frames", "zstd-skippable"],
)
def test_decompressed_stream(compress) -> None:  # type: ignore[no-untyped-def]
    tar = make_tar([Member("a", data=b"abc" * 1000), Member("b", data=b"")])
    assert decompressed_stream(io.BytesIO(compress(tar))).read() == tar


def test_many_members_inflate_in_linear_time() -> None:
    members = [compress_member(b"member %d\n" % i, 1) for i in range(30000)]
    started = time.perf_counter()
    out = b"".join(inflate_members([b"".join(members)]))
    assert out == b"".join(b"member %d\n" % i for i in range(30000))
    assert time.perf_counter() - started < 5


def test_members_are_deterministic_gzip() -> None:
    member = compress_member(b"hello", 6)
    assert member[:10] == b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff"
    assert gzip.decompress(member) == b"hello"
    assert compress_member(b"", 6) and gzip.decompress(compress_member(b"", 6)) == b""


def test_truncated_member_is_reported() -> None:
    data = compress_member(b"x" * 1000, 6)
    with pytest.raises(FormatError, match="truncated"):
        b"".join(inflate_members([data[:-3]]))
    with pytest.raises(FormatError, match="corrupt"):
        b"".join(inflate_members([data + b"garbage-after"]))
