"""Converting an uncompressed tar stream into an eStargz blob (reference ``estargz.Build``,
non-lossless mode), deterministically and with parallel compression.

Layout: [prioritized entries][.prefetch.landmark] or [.no.prefetch.landmark] first,
then the remaining entries in tar order; a new gzip member at every non-empty
file payload and every chunk; the TOC tar entry plus end-of-archive in its own
member; the 51-byte footer.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import BinaryIO, Protocol

from lazybuild.estargz.footer import encode_footer
from lazybuild.estargz.index import IndexStats
from lazybuild.estargz.memberpipeline import OrderedMemberWriter
from lazybuild.estargz.tarentry import (
    END_OF_ARCHIVE,
    TOCEntryFactory,
    encode_header,
    padding,
    plain_file_header,
)
from lazybuild.estargz.tarinput import (
    InputEntry,
    PayloadSource,
    prioritize,
    read_entries,
    seekable_input,
)
from lazybuild.estargz.toc import (
    LANDMARK_CONTENTS,
    NO_PREFETCH_LANDMARK,
    PREFETCH_FILE_MAX_BYTES,
    PREFETCH_LANDMARK,
    TOC,
    TOC_TAR_NAME,
    TOCEntry,
    encode_toc_json,
)

# Measured on a 306 MB rootfs-like tar (2 cores): zlib-ng level 6 output is 0.6%
# larger than the reference writer's (Go, gzip level 9) and ~10x faster; level 3
# is +4.9% (too close to the 5% budget), level 9 is -1.3% but 2x slower than 6.
DEFAULT_COMPRESSION_LEVEL = 6
DEFAULT_CHUNK_SIZE = 4 << 20
_EMPTY_DIGEST = "sha256:" + hashlib.sha256(b"").hexdigest()


def _default_workers() -> int:
    return os.cpu_count() or 1


@dataclass(frozen=True)
class WriterOptions:
    chunk_size: int = DEFAULT_CHUNK_SIZE
    compression_level: int = DEFAULT_COMPRESSION_LEVEL  # gzip levels 1-9 (zlib-ng)
    prioritized_files: Sequence[str] | None = None
    workers: int = field(default_factory=_default_workers)
    allow_missing_prioritized: bool = False  # else a missing path is a UsageError
    # Files over PREFETCH_FILE_MAX_BYTES are cut into chunks of this size when set.
    big_file_chunk_size: int | None = None


@dataclass(frozen=True)
class WrittenLayer:
    digest: str  # sha256 of the blob
    size: int
    diff_id: str  # sha256 of all uncompressed bytes (TOC tar entry included)
    uncompressed_size: int
    toc_digest: str
    stats: IndexStats
    missing_prioritized: tuple[str, ...] = ()
    toc_offset: int = 0  # where the TOC's gzip member starts
    prefetch_region_size: int = 0  # compressed bytes [0, n) holding the prioritized files


class _BlobBuilder:
    """Assembles members' uncompressed bytes in order and records TOC entries.

    Entry offsets are compressed positions that are only known once a member has
    been written, so entries first hold their member's index, resolved at the end.
    """

    def __init__(
        self, members: OrderedMemberWriter, chunk_size: int, big_file_chunk_size: int | None
    ) -> None:
        self._members = members
        self._chunk_size = chunk_size
        self._big_file_chunk_size = big_file_chunk_size or chunk_size
        self._open_member: list[bytes] = []
        self._open_size = 0
        self._diff_hash = hashlib.sha256()
        self.uncompressed_size = 0
        self.entries: list[TOCEntry] = []
        self._member_of_entry: list[tuple[TOCEntry, int]] = []
        self.files = 0
        self.chunks = 0

    def emit(self, data: bytes) -> None:
        self._open_member.append(data)
        self._open_size += len(data)
        self._diff_hash.update(data)
        self.uncompressed_size += len(data)

    def start_member(self) -> int:
        """Close the open member (if it has bytes); returns the index of the next one."""
        if self._open_size:
            self._members.add(self._open_member, self._open_size)
            self._open_member, self._open_size = [], 0
        return self._members.member_count

    def add_entry(self, entry: TOCEntry, header: bytes) -> None:
        self.emit(header)
        self.entries.append(entry)

    def add_file(self, entry: TOCEntry, header: bytes, payload: _Payload) -> None:
        """A regular file: header, then each chunk in a new member, then padding."""
        self.emit(header)
        self.files += 1
        size = entry.size
        chunk_size = self._chunk_size
        if size > PREFETCH_FILE_MAX_BYTES:
            chunk_size = self._big_file_chunk_size
        # A one-piece file's digest is its chunk digest: hash the content only once.
        file_hash = hashlib.sha256() if size > chunk_size else None
        piece_entry = entry
        written = 0
        while written < size:
            remaining = size - written
            piece_size = min(chunk_size, remaining)
            if remaining >= chunk_size:
                piece_entry.chunk_size = piece_size  # the reference's quirk, see spec §1.3
            piece_entry.chunk_offset = written
            self._member_of_entry.append((piece_entry, self.start_member()))
            data = payload.read(written, piece_size)
            if file_hash is not None:
                file_hash.update(data)
            piece_entry.chunk_digest = _sha256(data)
            self.emit(data)
            self.entries.append(piece_entry)
            self.chunks += 1
            written += piece_size
            piece_entry = TOCEntry(name=entry.name, type="chunk")
        if size == 0:
            self.entries.append(entry)
            entry.digest = _EMPTY_DIGEST
        elif file_hash is None:
            entry.digest = entry.chunk_digest
        else:
            entry.digest = "sha256:" + file_hash.hexdigest()
        self.emit(padding(size))

    def finish_data(self) -> None:
        """Close the last data member and give every entry its compressed offset."""
        self.start_member()
        self._members.flush()
        offsets = self._members.member_offsets
        for entry, member in self._member_of_entry:
            entry.offset = offsets[member]

    def diff_id(self) -> str:
        return "sha256:" + self._diff_hash.hexdigest()


class _Payload(Protocol):
    def read(self, offset: int, length: int) -> bytes: ...


class _InputPayload:
    """A file's content, read piecewise from the input tar."""

    def __init__(self, source: PayloadSource, entry: InputEntry) -> None:
        self._source = source
        self._entry = entry

    def read(self, offset: int, length: int) -> bytes:
        return self._source.read(self._entry.payload_offset + offset, length, self._entry.key)


class _BytesPayload:
    def __init__(self, data: bytes) -> None:
        self._data = data

    def read(self, offset: int, length: int) -> bytes:
        return self._data[offset : offset + length]


def _sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _landmark(builder: _BlobBuilder, name: str) -> TOCEntry:
    entry = TOCEntry(name=name, type="reg", size=len(LANDMARK_CONTENTS))
    builder.add_file(entry, plain_file_header(name, entry.size), _BytesPayload(LANDMARK_CONTENTS))
    return entry


def _write_entries(
    builder: _BlobBuilder, entries: list[InputEntry], source: PayloadSource, names: TOCEntryFactory
) -> None:
    for item in entries:
        entry = names.entry_for(item.info)
        header = encode_header(item.info)
        if entry.type == "reg":
            builder.add_file(entry, header, _InputPayload(source, item))
        else:
            builder.add_entry(entry, header)


def _write_entries_in_layout_order(
    builder: _BlobBuilder,
    source: PayloadSource,
    prioritized: list[InputEntry],
    rest: list[InputEntry],
    *,
    has_prioritized_list: bool,
) -> TOCEntry:
    """Returns the landmark entry (its offset, once known, ends the prefetch region)."""
    names = TOCEntryFactory()
    if has_prioritized_list:
        _write_entries(builder, prioritized, source, names)
        landmark = _landmark(builder, PREFETCH_LANDMARK)
    else:
        landmark = _landmark(builder, NO_PREFETCH_LANDMARK)
    _write_entries(builder, rest, source, names)
    return landmark


def _write_toc_and_footer(builder: _BlobBuilder, members: OrderedMemberWriter) -> tuple[bytes, int]:
    """Close the data, write the TOC member and the footer; returns the TOC JSON and
    the TOC member's offset."""
    builder.finish_data()
    toc_json = encode_toc_json(TOC(version=1, entries=builder.entries))
    builder.emit(plain_file_header(TOC_TAR_NAME, len(toc_json)))
    builder.emit(toc_json + padding(len(toc_json)) + END_OF_ARCHIVE)
    toc_member = builder.start_member() - 1  # the member just closed
    members.flush()
    toc_offset = members.member_offsets[toc_member]
    members.write_raw(encode_footer(toc_offset))
    return toc_json, toc_offset


def write_estargz(
    tar_in: BinaryIO, out: BinaryIO, options: WriterOptions = WriterOptions()
) -> WrittenLayer:
    """Convert the uncompressed tar ``tar_in`` into an eStargz blob written to ``out``."""
    if options.chunk_size <= 0:
        raise ValueError(f"chunk size must be positive, got {options.chunk_size}")
    if options.big_file_chunk_size is not None and options.big_file_chunk_size <= 0:
        raise ValueError(f"chunk size must be positive, got {options.big_file_chunk_size}")
    if not 0 <= options.compression_level <= 9:
        raise ValueError(f"gzip level must be 0-9, got {options.compression_level}")
    with seekable_input(tar_in) as source_file:
        entries = read_entries(source_file)
        prioritized_paths = list(options.prioritized_files or ())
        first, rest, missing = prioritize(
            entries, prioritized_paths, allow_missing=options.allow_missing_prioritized
        )
        members = OrderedMemberWriter(out, options.compression_level, max(1, options.workers))
        builder = _BlobBuilder(members, options.chunk_size, options.big_file_chunk_size)
        try:
            landmark = _write_entries_in_layout_order(
                builder,
                PayloadSource(source_file),
                first,
                rest,
                has_prioritized_list=bool(prioritized_paths),
            )
            toc_json, toc_offset = _write_toc_and_footer(builder, members)
        except BaseException:
            members.abort()
            raise
        members.close()
    stats = IndexStats(
        entries=len(builder.entries),
        files=builder.files - 1,  # the landmark is not a file of the layer
        chunks=builder.chunks - 1,
        prioritized_files=sum(1 for e in first if e.info.isreg()) if prioritized_paths else 0,
        landmark="prefetch" if prioritized_paths else "no-prefetch",
    )
    return WrittenLayer(
        digest=members.blob_digest(),
        size=members.written,
        diff_id=builder.diff_id(),
        uncompressed_size=builder.uncompressed_size,
        toc_digest=_sha256(toc_json),
        stats=stats,
        missing_prioritized=tuple(missing),
        toc_offset=toc_offset,
        prefetch_region_size=landmark.offset if prioritized_paths else 0,
    )
