"""Opening an eStargz layer without doing I/O: footer -> TOC -> verified index -> chunks.

The caller fetches bytes (HTTP range requests, a local file, a cache) and hands
them in; this module only checks and interprets them. Nothing it returns is
unverified: the TOC is checked against the expected digest before it is parsed
into an index, and chunk content against its ``chunkDigest`` before it is returned.
"""

from __future__ import annotations

import hashlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from lazybuild.errors import DigestMismatchError, FormatError
from lazybuild.estargz.footer import FOOTER_SIZE, Footer, parse_footer
from lazybuild.estargz.gcpause import collector_paused
from lazybuild.estargz.gzipmembers import inflate_prefix
from lazybuild.estargz.index import MAX_CHUNK_INFLATE, MAX_CHUNK_SIZE, ChunkRef, LayerIndex
from lazybuild.estargz.toc import decode_toc_json
from lazybuild.estargz.tocmember import MAX_TOC_COMPRESSED_SIZE, extract_toc_json

# The first read of a layer takes this much of its end: the footer plus, for most
# small and medium layers, the whole compressed TOC, saving a second round trip.
TAIL_READ_SIZE = 256 << 10
# A TOC offset hint is followed for a first read up to this size (a compressed TOC of
# ~100,000 entries); a hint further from the end is not believed.
MAX_HINTED_TAIL_BYTES = 16 << 20


@dataclass(frozen=True)
class OpenedLayer:
    index: LayerIndex
    toc_digest: str
    toc_json: bytes  # exactly the bytes that hash to toc_digest
    footer: Footer
    toc_offset: int


def tail_read_range(blob_size: int) -> tuple[int, int]:
    """(start, length) of the first read of a blob: its last ``TAIL_READ_SIZE`` bytes."""
    if blob_size < 0:
        raise ValueError(f"negative blob size {blob_size}")
    length = min(blob_size, max(TAIL_READ_SIZE, FOOTER_SIZE))
    return blob_size - length, length


async def read_toc_region(
    read_at: Callable[[int, int], Awaitable[bytes]],
    blob_size: int,
    *,
    tail: bytes | None = None,
    toc_offset_hint: int | None = None,
    where: str = "layer",
) -> tuple[bytes, int]:
    """The end of a blob from its TOC on, and where that starts: the input of ``parse_layer``.

    ``read_at(offset, length)`` is the caller's async reader (a registry, a file);
    ``tail`` is the ``tail_read_range`` read when the caller already made it. One read
    usually covers footer and TOC; a bigger TOC costs exactly one more. With
    ``toc_offset_hint`` (where the TOC is said to start), the first read starts there,
    so it is one read whatever the TOC's size, and no bigger than needed.
    """
    tail_start, tail_length = tail_read_range(blob_size)
    if tail is None:
        if (
            toc_offset_hint is not None
            and 0 <= toc_offset_hint <= blob_size - FOOTER_SIZE
            and blob_size - toc_offset_hint <= MAX_HINTED_TAIL_BYTES
        ):
            tail_start, tail_length = toc_offset_hint, blob_size - toc_offset_hint
        tail = await read_at(tail_start, tail_length)
    try:
        footer = parse_footer(tail[-FOOTER_SIZE:] if len(tail) > FOOTER_SIZE else tail)
    except FormatError as exc:
        raise FormatError(f"{where}: {exc}") from None
    if footer.toc_offset < tail_start:
        if footer.toc_offset < 0:
            raise FormatError(f"{where}: TOC offset {footer.toc_offset} outside the blob")
        _check_toc_region(footer.toc_offset, blob_size - footer.size, blob_size, where)
        tail = await read_at(footer.toc_offset, tail_start - footer.toc_offset) + tail
        tail_start = footer.toc_offset
    return tail, tail_start


def sha256_digest(data: bytes | bytearray | memoryview) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def parse_layer(
    tail: bytes,
    tail_start: int,
    blob_size: int,
    expected_toc_digest: str | None,
    read_at: Callable[[int, int], bytes] | None = None,
    *,
    where: str = "layer",
) -> OpenedLayer:
    """Parse a layer from its ``tail`` (``blob[tail_start:blob_size]``).

    ``read_at(offset, length)`` is called once when the TOC starts before the tail.
    ``where`` names the layer in error messages (e.g. ``"layer sha256:ab12…"``).
    Raises ``DigestMismatchError`` when the TOC does not hash to ``expected_toc_digest``.
    """
    if tail_start < 0 or tail_start + len(tail) != blob_size:
        raise FormatError(
            f"{where}: tail of {len(tail)} bytes at {tail_start} "
            f"does not end at blob size {blob_size}"
        )
    try:
        footer = parse_footer(tail[-FOOTER_SIZE:] if len(tail) > FOOTER_SIZE else tail)
    except FormatError as exc:
        raise FormatError(f"{where}: {exc}") from None
    toc_end = blob_size - footer.size
    toc_offset = footer.toc_offset
    if toc_offset >= toc_end:
        raise FormatError(
            f"{where}: TOC offset {toc_offset} beyond the end of the TOC region "
            f"{toc_end} (blob size {blob_size})"
        )
    _check_toc_region(toc_offset, toc_end, blob_size, where)
    toc_member = _toc_member_bytes(tail, tail_start, (toc_offset, toc_end), read_at, where)
    toc_json = extract_toc_json(toc_member, f"{where}: TOC at offset {toc_offset}")
    toc_digest = sha256_digest(toc_json)
    if expected_toc_digest is not None and toc_digest != expected_toc_digest:
        raise DigestMismatchError(
            f"{where}: TOC digest is {toc_digest}, expected {expected_toc_digest}"
        )
    with collector_paused():  # the entries are alive until the index is made of them
        index = LayerIndex(decode_toc_json(toc_json), data_end=toc_offset, where=where)
    return OpenedLayer(index, toc_digest, toc_json, footer, toc_offset)


def _check_toc_region(toc_offset: int, toc_end: int, blob_size: int, where: str) -> None:
    """Refuse a footer that puts the TOC further from the end than any TOC can be (a
    footer pointing at offset 0 would otherwise have the whole blob read into memory)."""
    if toc_end - toc_offset > MAX_TOC_COMPRESSED_SIZE:
        raise FormatError(
            f"{where}: footer puts the TOC at offset {toc_offset}, {toc_end - toc_offset} bytes "
            f"before the footer of a {blob_size}-byte blob; a compressed TOC is at most "
            f"{MAX_TOC_COMPRESSED_SIZE >> 20} MiB"
        )


def _toc_member_bytes(
    tail: bytes,
    tail_start: int,
    toc_range: tuple[int, int],
    read_at: Callable[[int, int], bytes] | None,
    where: str,
) -> bytes:
    toc_offset, toc_end = toc_range
    if toc_offset >= tail_start:
        return tail[toc_offset - tail_start : toc_end - tail_start]
    if read_at is None:
        raise FormatError(
            f"{where}: TOC at offset {toc_offset} starts before the tail read at {tail_start} "
            "and no read_at was given"
        )
    length = toc_end - toc_offset
    data = read_at(toc_offset, length)
    if len(data) != length:
        raise FormatError(
            f"{where}: read of TOC [{toc_offset}, +{length}) returned {len(data)} bytes"
        )
    return data


def decompress_chunk(compressed: bytes, chunk: ChunkRef, *, where: str = "layer") -> bytes:
    """The verified content of ``chunk`` from ``compressed`` = ``blob[chunk.offset:chunk.end]``."""
    if len(compressed) != chunk.end - chunk.offset:
        raise FormatError(
            f"{where}: chunk at {chunk.offset} needs {chunk.end - chunk.offset} compressed bytes, "
            f"got {len(compressed)}"
        )
    if not chunk.digest:
        raise FormatError(f"{where}: chunk at {chunk.offset} has no digest to verify it with")
    label = f"{where}: chunk at offset {chunk.offset}"
    if chunk.size > MAX_CHUNK_SIZE or chunk.inner_offset + chunk.size > MAX_CHUNK_INFLATE:
        raise FormatError(f"{label}: chunk of {chunk.size} bytes is over the limits")
    content = inflate_prefix(compressed, chunk.size, label, skip=chunk.inner_offset)
    actual = sha256_digest(content)
    if actual != chunk.digest:
        raise DigestMismatchError(f"{label}: content digest {actual}, expected {chunk.digest}")
    return content
