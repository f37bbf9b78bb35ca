"""HTTP byte ranges: ``Range`` headers, ``Content-Range``, ``multipart/byteranges`` bodies.

Servers may answer a multi-range request with one part per range, with fewer parts
covering several ranges (RFC 9110 lets them coalesce), with one single-part 206, or
with the whole entity (200). All of these become a list of ``Part`` (a start offset
and bytes); requested ranges are then cut out of whichever part covers them.
Anything inconsistent is a RegistryError: bytes at the wrong offset would otherwise
surface much later as a corrupt file.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from lazybuild.errors import RegistryError

# ASCII digits only, at most 19 (an int64, as HTTP servers send): int() of a few
# thousand digits is a ValueError, and "\d" alone would take any script's digits.
_CONTENT_RANGE = re.compile(
    r"[ \t]*bytes[ \t]+([0-9]{1,19})-([0-9]{1,19})/([0-9]{1,19}|\*)[ \t]*", re.IGNORECASE
)
_BOUNDARY = re.compile(r'boundary\s*=\s*(?:"([^"]+)"|([^;\s]+))', re.IGNORECASE)


@dataclass(frozen=True)
class ContentRange:
    start: int
    end: int  # inclusive, as on the wire
    total: int | None  # None for "*"

    @property
    def length(self) -> int:
        return self.end - self.start + 1


@dataclass(frozen=True)
class Part:
    start: int
    data: bytes
    total: int | None = None

    @property
    def stop(self) -> int:
        return self.start + len(self.data)


def parse_content_range(value: str | None, where: str) -> ContentRange:
    if value is None:
        raise RegistryError(f"{where}: 206 answer without Content-Range")
    match = _CONTENT_RANGE.fullmatch(value)
    if match is None:
        raise RegistryError(f"{where}: malformed Content-Range {value!r:.100}")
    start, end = int(match.group(1)), int(match.group(2))
    total = None if match.group(3) == "*" else int(match.group(3))
    if end < start or (total is not None and end >= total):
        raise RegistryError(f"{where}: impossible Content-Range {value!r:.100}")
    return ContentRange(start, end, total)


def merge_spans(ranges: Sequence[tuple[int, int]], max_gap: int = 0) -> list[tuple[int, int]]:
    """(offset, length) pairs -> sorted, disjoint (start, stop) spans.

    Overlapping and touching ranges always merge (servers may refuse or inflate
    overlapping requests); ranges closer than ``max_gap`` bytes merge too.
    """
    spans: list[tuple[int, int]] = []
    for start, stop in sorted((offset, offset + length) for offset, length in ranges if length):
        if spans and start <= spans[-1][1] + max_gap:
            spans[-1] = (spans[-1][0], max(spans[-1][1], stop))
        else:
            spans.append((start, stop))
    return spans


def range_header(spans: Sequence[tuple[int, int]]) -> str:
    """``bytes=a-b,c-d`` for (start, stop) spans (stop exclusive)."""
    return "bytes=" + ",".join(f"{start}-{stop - 1}" for start, stop in spans)


def single_part(body: bytes, content_range: str | None, where: str) -> Part:
    """The part of a single-range 206 answer, after checking its length."""
    parsed = parse_content_range(content_range, where)
    if len(body) != parsed.length:
        raise RegistryError(
            f"{where}: Content-Range {content_range!r} announces {parsed.length} bytes, "
            f"got {len(body)}"
        )
    return Part(parsed.start, body, parsed.total)


def multipart_boundary(content_type: str) -> str | None:
    """The boundary of a ``multipart/byteranges`` Content-Type, or None if it is not one."""
    if not content_type.lower().lstrip().startswith("multipart/byteranges"):
        return None
    match = _BOUNDARY.search(content_type)
    return (match.group(1) or match.group(2)) if match else None


def parse_multipart_byteranges(body: bytes, boundary: str, where: str) -> list[Part]:
    """The parts of a ``multipart/byteranges`` body (RFC 9110 §14.6).

    Each part's length comes from its Content-Range rather than from searching for
    the next delimiter, so part data that happens to contain the boundary is safe.
    """
    try:
        delimiter = b"--" + boundary.encode("latin-1")
    except UnicodeEncodeError:
        raise RegistryError(
            f"{where}: multipart boundary {boundary!r:.80} is not latin-1"
        ) from None
    position = body.find(delimiter)
    if position < 0:
        raise RegistryError(f"{where}: multipart body without its boundary")
    parts: list[Part] = []
    while True:
        position += len(delimiter)
        if body.startswith(b"--", position):
            break  # the close delimiter
        line_end = body.find(b"\n", position)
        if line_end < 0:
            raise RegistryError(f"{where}: multipart body ends inside a delimiter line")
        headers, data_start = _part_headers(body, line_end + 1, where)
        content_range = parse_content_range(headers.get("content-range"), f"{where} part")
        data = body[data_start : data_start + content_range.length]
        if len(data) != content_range.length:
            raise RegistryError(f"{where}: multipart part is shorter than its Content-Range")
        parts.append(Part(content_range.start, data, content_range.total))
        position = data_start + content_range.length
        # The CRLF before the next delimiter belongs to the delimiter.
        if body.startswith(b"\r\n", position):
            position += 2
        elif body.startswith(b"\n", position):
            position += 1
        if not body.startswith(delimiter, position):
            raise RegistryError(f"{where}: multipart part is longer than its Content-Range")
    if not parts:
        raise RegistryError(f"{where}: multipart body without parts")
    return parts


def _part_headers(body: bytes, position: int, where: str) -> tuple[dict[str, str], int]:
    headers: dict[str, str] = {}
    while True:
        line_end = body.find(b"\n", position)
        if line_end < 0:
            raise RegistryError(f"{where}: multipart part headers are not terminated")
        line = body[position:line_end].rstrip(b"\r")
        position = line_end + 1
        if not line:
            return headers, position
        name, colon, value = line.decode("latin-1").partition(":")
        if colon:
            headers[name.strip().lower()] = value.strip()
