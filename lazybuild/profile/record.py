"""The workload record: which files a workload read, in order, and which layer has each.

The format is ctr-remote's (``ctr-remote image optimize --record-out``, stargz-snapshotter's
``recorder.Entry``): one JSON object per line, as Go's ``json.Encoder`` writes them::

    {"path":"usr/bin/python3.11","manifestDigest":"sha256:…","layerIndex":3}

``path`` is relative to the image root (no leading slash), ``layerIndex`` counts the
manifest's layers from the bottom (0) and ``manifestDigest`` names the image manifest the
indexes refer to; both may be absent. Entries are in first-access order, each path once.
A record written by ctr-remote reads here and one written here feeds
``ctr-remote image convert --estargz-record-in``.

lazybuild adds one field, which Go's decoder skips as unknown: ``readRanges``, for a file
too big to prefetch whole (``PREFETCH_FILE_MAX_BYTES``, a JVM's ``modules``), lists the
places the workload read as ``[offset, length]`` pairs, so a run fetches only those.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from lazybuild.errors import FormatError
from lazybuild.estargz.gojson import quote
from lazybuild.estargz.index import clean_name
from lazybuild.profile.offsetranges import decode_offset_ranges
from lazybuild.state.atomicfile import write_atomic

RECORD_MEDIA_TYPE = "application/vnd.lazybuild.workload-record.v1+jsonl"


# Beyond this many places in one file, a record is not describing a start-up.
MAX_READ_RANGES = 4096
ReadRanges = tuple[tuple[int, int], ...]


@dataclass(frozen=True)
class RecordEntry:
    path: str
    manifest_digest: str | None = None
    layer_index: int | None = None
    read_ranges: ReadRanges = ()

    def encode(self) -> str:
        """One line, byte for byte what Go's ``json.Encoder`` writes for ``recorder.Entry``."""
        fields = [f'"path":{quote(self.path)}']
        if self.manifest_digest:
            fields.append(f'"manifestDigest":{quote(self.manifest_digest)}')
        if self.layer_index is not None:
            fields.append(f'"layerIndex":{self.layer_index}')
        if self.read_ranges:
            pairs = ",".join(f"[{offset},{length}]" for offset, length in self.read_ranges)
            fields.append(f'"readRanges":[{pairs}]')
        return "{" + ",".join(fields) + "}\n"


def encode_record(entries: Iterable[RecordEntry]) -> bytes:
    return "".join(entry.encode() for entry in entries).encode()


def decode_record(data: bytes, where: str = "record") -> list[RecordEntry]:
    """Entries of a record; like Go's ``json.Decoder``, any whitespace may separate them."""
    try:
        text = data.decode()
    except UnicodeDecodeError as exc:
        raise FormatError(f"{where}: not UTF-8: {exc}") from None
    decoder = json.JSONDecoder()
    entries: list[RecordEntry] = []
    position = _skip_space(text, 0)
    while position < len(text):
        try:
            value, position = decoder.raw_decode(text, position)
        except json.JSONDecodeError as exc:
            raise FormatError(f"{where}: entry {len(entries) + 1}: {exc}") from None
        entries.append(_entry(value, f"{where}: entry {len(entries) + 1}"))
        position = _skip_space(text, position)
    return entries


def _skip_space(text: str, position: int) -> int:
    while position < len(text) and text[position] in " \t\r\n":
        position += 1
    return position


def _entry(value: object, where: str) -> RecordEntry:
    if not isinstance(value, dict):
        raise FormatError(f"{where} is not a JSON object")
    path = value.get("path")
    if not isinstance(path, str) or not clean_name(path):
        raise FormatError(f"{where} has no path")
    digest = value.get("manifestDigest")
    if digest is not None and not isinstance(digest, str):
        raise FormatError(f"{where}: manifestDigest is not a string")
    index = value.get("layerIndex")
    if index is not None and (isinstance(index, bool) or not isinstance(index, int) or index < 0):
        raise FormatError(f"{where}: layerIndex is not a layer number")
    return RecordEntry(
        clean_name(path), digest or None, index, _read_ranges(value.get("readRanges"), where)
    )


def _read_ranges(value: object, where: str) -> ReadRanges:
    if value is None:
        return ()
    problem = f"{where}: readRanges is not a list of [offset, length] pairs"
    if isinstance(value, list) and len(value) > MAX_READ_RANGES:
        raise FormatError(problem)
    return tuple(decode_offset_ranges(value, problem))


def read_record(path: Path) -> list[RecordEntry]:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise FormatError(f"cannot read record {path}: {exc.strerror}") from None
    return decode_record(data, str(path))


def write_record(path: Path, entries: Iterable[RecordEntry]) -> None:
    """Write the record next to ``path`` first, then rename: a reader never sees half of it."""
    write_atomic(path, encode_record(entries))


def record_read_ranges(entries: Sequence[RecordEntry]) -> dict[str, ReadRanges]:
    """By path, the places read of the big files the record says that of."""
    return {entry.path: entry.read_ranges for entry in entries if entry.read_ranges}


def record_paths(entries: Sequence[RecordEntry]) -> list[str]:
    """The recorded paths in order, each once (``ctr-remote convert --estargz-record-in``
    reads a record the same way)."""
    return list(dict.fromkeys(entry.path for entry in entries))
