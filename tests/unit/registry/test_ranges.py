from __future__ import annotations

import pytest

from lazybuild.errors import RegistryError
from lazybuild.registry.ranges import (
    ContentRange,
    Part,
    merge_spans,
    multipart_boundary,
    parse_content_range,
    parse_multipart_byteranges,
    range_header,
    single_part,
)


def multipart(boundary: str, parts: list[tuple[int, bytes]], total: int, newline: str) -> bytes:
    body = b"preamble to ignore"
    for start, data in parts:
        body += (
            f"{newline}--{boundary}{newline}Content-Type: application/octet-stream{newline}"
            f"Content-Range: bytes {start}-{start + len(data) - 1}/{total}{newline}{newline}"
        ).encode() + data
    return body + f"{newline}--{boundary}--{newline}".encode()


@pytest.mark.parametrize("newline", ["\r\n", "\n"])
def test_multipart_parts_may_contain_the_boundary(newline: str) -> None:
    tricky = b"--XYZ\r\nContent-Range: bytes 0-0/1\r\n\r\n"
    body = multipart("XYZ", [(0, b"abc"), (100, tricky)], 1000, newline)
    parts = parse_multipart_byteranges(body, "XYZ", "test")
    assert parts == [Part(0, b"abc", 1000), Part(100, tricky, 1000)]


def test_multipart_length_mismatch_is_an_error() -> None:
    body = multipart("B", [(0, b"abc")], 10, "\r\n").replace(b"0-2/10", b"0-1/10")
    with pytest.raises(RegistryError, match="longer than its Content-Range"):
        parse_multipart_byteranges(body, "B", "test")
    truncated = multipart("B", [(0, b"abc")], 100, "\r\n").replace(b"0-2/100", b"0-49/100")
    with pytest.raises(RegistryError, match="shorter than its Content-Range"):
        parse_multipart_byteranges(truncated, "B", "test")
    with pytest.raises(RegistryError, match="without its boundary"):
        parse_multipart_byteranges(b"nothing", "B", "test")
    with pytest.raises(RegistryError, match="without parts"):
        parse_multipart_byteranges(b"--B--\r\n", "B", "test")


def test_boundary_from_content_type() -> None:
    assert multipart_boundary("multipart/byteranges; boundary=abc") == "abc"
    assert multipart_boundary('Multipart/ByteRanges; boundary="a b"; x=y') == "a b"
    assert multipart_boundary("application/octet-stream") is None


def test_content_range() -> None:
    assert parse_content_range("bytes 0-9/100", "t") == ContentRange(0, 9, 100)
    assert parse_content_range("bytes 5-5/*", "t") == ContentRange(5, 5, None)
    for bad in ("bytes 9-0/100", "bytes 0-100/100", "0-9/100", "bytes a-b/c", "items 0-1/2"):
        with pytest.raises(RegistryError):
            parse_content_range(bad, "t")
    with pytest.raises(RegistryError, match="without Content-Range"):
        parse_content_range(None, "t")


def test_single_part_checks_length() -> None:
    assert single_part(b"abc", "bytes 3-5/10", "t") == Part(3, b"abc", 10)
    with pytest.raises(RegistryError, match="announces 4 bytes"):
        single_part(b"abc", "bytes 3-6/10", "t")


def test_merge_spans_and_header() -> None:
    ranges = [(100, 10), (0, 10), (5, 10), (15, 5), (50, 0), (200, 1)]
    assert merge_spans(ranges) == [(0, 20), (100, 110), (200, 201)]
    assert merge_spans(ranges, max_gap=80) == [(0, 110), (200, 201)]
    assert range_header([(0, 20), (100, 110)]) == "bytes=0-19,100-109"
