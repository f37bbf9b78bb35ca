"""Recognising what a layer blob is, and reading any layer as a plain tar stream."""

from __future__ import annotations

import enum
import io
from collections.abc import Iterator
from typing import BinaryIO

import zstandard

from lazybuild.errors import FormatError
from lazybuild.estargz.footer import parse_footer
from lazybuild.estargz.gzipmembers import inflate_members

GZIP_MAGIC = b"\x1f\x8b\x08"
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
# zstd:chunked footers end in a magic (current containers/storage, and the older
# dialect that stargz-snapshotter writes).
_ZSTD_CHUNKED_MAGICS = (b"GNUlInUx", b"GnUlInUx")
_TAR_MAGIC_OFFSET = 257
_READ_BLOCK = 1 << 20


class LayerFormat(enum.Enum):
    ESTARGZ = "estargz"
    LEGACY_STARGZ = "legacy-stargz"
    GZIP = "gzip"
    ZSTD = "zstd"
    ZSTD_CHUNKED = "zstd:chunked"
    UNCOMPRESSED = "uncompressed"


def _media_type_compression(media_type: str) -> str | None:
    lowered = media_type.lower()
    if lowered.endswith(("+gzip", ".gzip", "tar.gz")):
        return "gzip"
    if lowered.endswith(("+zstd", ".zstd")):
        return "zstd"
    return None


def detect_format(media_type: str, head: bytes, tail: bytes) -> LayerFormat:
    """Classify a layer from its media type, first bytes and last (>= 72) bytes.

    Magic bytes decide; the media type only catches blobs that contradict it.
    """
    claimed = _media_type_compression(media_type)
    if head.startswith(GZIP_MAGIC):
        if claimed == "zstd":
            raise FormatError(f"layer of media type {media_type} is gzip-compressed")
        try:
            footer = parse_footer(tail)
        except FormatError:
            return LayerFormat.GZIP
        return LayerFormat.LEGACY_STARGZ if footer.legacy else LayerFormat.ESTARGZ
    if head.startswith(ZSTD_MAGIC):
        if claimed == "gzip":
            raise FormatError(f"layer of media type {media_type} is zstd-compressed")
        if tail.endswith(_ZSTD_CHUNKED_MAGICS):
            return LayerFormat.ZSTD_CHUNKED
        return LayerFormat.ZSTD
    if claimed is not None:
        raise FormatError(
            f"layer of media type {media_type} does not start with {claimed} magic "
            f"(first bytes {head[:8].hex()})"
        )
    return LayerFormat.UNCOMPRESSED


class _GunzipReader(io.RawIOBase):
    """All gzip members of ``raw``, inflated, as one readable stream."""

    def __init__(self, raw: BinaryIO, prefix: bytes) -> None:
        self._raw = raw
        self._blocks = inflate_members(self._compressed(prefix), "gzip layer")
        self._buffer = b""

    def _compressed(self, prefix: bytes) -> Iterator[bytes]:
        if prefix:
            yield prefix
        while block := self._raw.read(_READ_BLOCK):
            yield block

    def readable(self) -> bool:
        return True

    def readinto(self, target: bytearray | memoryview) -> int:  # type: ignore[override]
        while not self._buffer:
            block = next(self._blocks, None)
            if block is None:
                return 0
            self._buffer = block
        count = min(len(target), len(self._buffer))
        target[:count] = self._buffer[:count]
        self._buffer = self._buffer[count:]
        return count


class _PrefixedReader(io.RawIOBase):
    """``prefix`` followed by the rest of ``raw`` (to put back sniffed magic bytes)."""

    def __init__(self, raw: BinaryIO, prefix: bytes) -> None:
        self._raw = raw
        self._prefix = prefix

    def readable(self) -> bool:
        return True

    def readinto(self, target: bytearray | memoryview) -> int:  # type: ignore[override]
        if self._prefix:
            count = min(len(target), len(self._prefix))
            target[:count] = self._prefix[:count]
            self._prefix = self._prefix[count:]
            return count
        data = self._raw.read(len(target))
        target[: len(data)] = data
        return len(data)


def decompressed_stream(raw: BinaryIO) -> BinaryIO:
    """``raw`` (gzip with any number of members, zstd, or plain tar) as an uncompressed stream."""
    head = raw.read(len(ZSTD_MAGIC))
    while len(head) < len(ZSTD_MAGIC):
        more = raw.read(len(ZSTD_MAGIC) - len(head))
        if not more:
            break
        head += more
    if head.startswith(GZIP_MAGIC):
        return io.BufferedReader(_GunzipReader(raw, head), _READ_BLOCK)
    if head.startswith(ZSTD_MAGIC):
        prefixed = io.BufferedReader(_PrefixedReader(raw, head), _READ_BLOCK)
        reader = zstandard.ZstdDecompressor().stream_reader(prefixed, read_across_frames=True)
        return io.BufferedReader(reader, _READ_BLOCK)
    return io.BufferedReader(_PrefixedReader(raw, head), _READ_BLOCK)
