"""An archive's compression, recognised by its magic bytes (never by a file name), as
Docker's and BuildKit's ``DetectCompression``: gzip, bzip2, xz and zstd; anything else
is read as it is. Layers have their own, narrower rule (gzip or zstd, by media type
and magic: ``estargz.layerformat``).
"""

from __future__ import annotations

import bz2
import contextlib
import gzip
import lzma
import zlib
from collections.abc import Iterator
from typing import BinaryIO, cast

import zstandard

from lazybuild.errors import FormatError
from lazybuild.untar.tarheader import BLOCK, parse_header

__all__ = ["DECODE_ERRORS", "decompressed", "starts_with_tar_header"]

_GZIP_MAGIC = b"\x1f\x8b\x08"
_BZIP2_MAGIC = b"BZh"
_XZ_MAGIC = b"\xfd7zXZ\x00"
_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
_MAGIC_LENGTH = 6

# What decompressors raise on data that only looked like their format (gzip's own
# BadGzipFile is an OSError without an errno).
DECODE_ERRORS = (EOFError, zlib.error, lzma.LZMAError, zstandard.ZstdError)


@contextlib.contextmanager
def decompressed(raw: BinaryIO) -> Iterator[BinaryIO]:
    """``raw``'s bytes (``raw`` at its start, seekable), decompressed when they start
    with a known compression's magic."""
    head = raw.read(_MAGIC_LENGTH)
    raw.seek(0)
    stream = _decompressor(raw, head)
    if stream is None:
        yield raw
        return
    with stream:
        yield stream


def _decompressor(raw: BinaryIO, head: bytes) -> BinaryIO | None:
    stream: object
    if head.startswith(_GZIP_MAGIC):
        stream = gzip.GzipFile(fileobj=raw, mode="rb")
    elif head.startswith(_BZIP2_MAGIC):
        stream = bz2.BZ2File(raw, mode="rb")
    elif head.startswith(_XZ_MAGIC):
        stream = lzma.LZMAFile(raw, mode="rb")  # noqa: SIM115 (the caller closes it)
    elif head.startswith(_ZSTD_MAGIC):
        stream = zstandard.ZstdDecompressor().stream_reader(raw, read_across_frames=True)
    else:
        return None
    # Each is a readable, closable binary stream: all that reading a tar needs.
    return cast(BinaryIO, stream)


def starts_with_tar_header(stream: BinaryIO) -> bool:
    """Whether ``stream`` starts with a tar header with a valid checksum, as Go's
    ``tar.Reader.Next`` requires (a decoding failure is no tar either)."""
    block = b""
    try:
        while len(block) < BLOCK:
            more = stream.read(BLOCK - len(block))
            if not more:
                break
            block += more
        parse_header(block)
    except (OSError, *DECODE_ERRORS, FormatError):
        return False
    return True
