"""The eStargz table of contents (``stargz.index.json``): data model, encoder, decoder.

The encoder reproduces ``json.MarshalIndent(toc, "", "\\t")`` of the reference Go
structs byte for byte (keys in struct order, ``omitempty`` on everything except
``name`` and ``type``), because the TOC digest is taken over these bytes.
The decoder is tolerant in the way Go's decoder is: missing keys are zero values,
unknown keys (such as legacy ``NumLink``) are ignored, and keys match case-insensitively.
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass, field, fields
from typing import Any

from lazybuild.errors import FormatError
from lazybuild.estargz import tocschema
from lazybuild.estargz.gcpause import collector_paused
from lazybuild.estargz.gojson import quote

TOC_TAR_NAME = "stargz.index.json"
PREFETCH_LANDMARK = ".prefetch.landmark"
NO_PREFETCH_LANDMARK = ".no.prefetch.landmark"
# Files larger than this (uncompressed) stay out of prefetch regions and prefetch lists.
# A file that large is mostly read in parts (a JVM's module image, a database): fetching
# all of it before the workload starts cost more than it saved (a JVM server started
# 1.3x slower). Left out, it is read on demand, or prefetched in the places a workload
# record names (readRanges).
PREFETCH_FILE_MAX_BYTES = 32 << 20
# Layers written for a workload cut such files finer than the 4 MiB default: a record
# names the places read of them, and a prefetch of those places fetches whole chunks
# around them. A JVM reads 5.3 MiB of its 123 MiB ``modules`` in 34 places, 64 KiB
# each or more; chunks around them come to 28 MiB at 4 MiB, 8 MiB at 256 KiB and the
# 5.3 MiB read at 64 KiB. That is ~2,000 TOC entries (~80 KB more TOC) for the file.
BIG_FILE_CHUNK_SIZE = 64 << 10
LANDMARK_CONTENTS = b"\x0f"

# Entries refused above this many. A real TOC of the largest size accepted
# (``tocmember.MAX_TOC_JSON_SIZE``, 64 MiB) holds ~200,000-300,000 entries; an index
# costs ~1.2 KB of memory per entry, so this bounds it near 600 MB. Counted while the
# JSON is decoded (objects), so a hostile TOC of tiny entries stops early.
MAX_TOC_ENTRIES = 500_000
# Integers are Go int64s in the reference reader; larger ones are refused as Go does.
_INT64_LIMIT = 1 << 63

ENTRY_TYPES = frozenset({"dir", "reg", "symlink", "hardlink", "char", "block", "fifo", "chunk"})


@dataclass
class TOCEntry:
    """One TOC entry. Attribute order is the Go struct order, which fixes the JSON key order."""

    name: str
    type: str
    size: int = 0
    modtime: str = ""  # RFC 3339, second precision, as written (kept verbatim for re-encoding)
    link_name: str = ""
    mode: int = 0
    uid: int = 0
    gid: int = 0
    user_name: str = ""
    group_name: str = ""
    offset: int = 0
    inner_offset: int = 0
    dev_major: int = 0
    dev_minor: int = 0
    xattrs: dict[str, bytes] = field(default_factory=dict)
    digest: str = ""
    chunk_offset: int = 0
    chunk_size: int = 0
    chunk_digest: str = ""


@dataclass
class TOC:
    version: int
    entries: list[TOCEntry]


def _json_key(attr: str) -> str:
    head, *rest = attr.split("_")
    return head + "".join(part.capitalize() for part in rest)


# (attribute, JSON key) in struct order; "modtime" is the one key that is not camelCase of its attr.
_KEYS: tuple[tuple[str, str], ...] = tuple(
    (f.name, "modtime" if f.name == "modtime" else _json_key(f.name)) for f in fields(TOCEntry)
)
_ALWAYS_PRESENT = frozenset({"name", "type"})
_INT_ATTRS = frozenset(f.name for f in fields(TOCEntry) if f.type == "int")
_STR_ATTRS = frozenset(f.name for f in fields(TOCEntry) if f.type == "str")
_ATTR_BY_KEY = {key: attr for attr, key in _KEYS}
_ATTR_BY_FOLDED_KEY = {key.lower(): attr for attr, key in _KEYS}


_ENTRY_INDENT = "\t\t\t"
# (attribute, the text that precedes its value, whether it is written even when empty)
_FIELD_PREFIXES = tuple(
    (attr, f'{_ENTRY_INDENT}"{key}": ', attr in _ALWAYS_PRESENT) for attr, key in _KEYS
)


def _encode_xattrs(xattrs: dict[str, bytes]) -> str:
    # Go sorts map keys by their UTF-8 bytes; []byte values are standard base64.
    inner = _ENTRY_INDENT + "\t"
    items = sorted(xattrs.items(), key=lambda kv: kv[0].encode("utf-8", "surrogatepass"))
    body = ",\n".join(
        f"{inner}{quote(k)}: {quote(base64.b64encode(v).decode('ascii'))}" for k, v in items
    )
    return "{\n" + body + "\n" + _ENTRY_INDENT + "}"


def _encode_entry(entry: TOCEntry) -> str:
    values = vars(entry)
    lines = []
    for attr, prefix, always in _FIELD_PREFIXES:
        value = values[attr]
        if not value and not always:
            continue  # omitempty: 0, "" and empty maps are left out
        if isinstance(value, str):
            lines.append(prefix + quote(value))
        elif isinstance(value, int):
            lines.append(prefix + str(value))
        else:
            lines.append(prefix + _encode_xattrs(value))
    return "\t\t{\n" + ",\n".join(lines) + "\n\t\t}"


def encode_toc_json(toc: TOC) -> bytes:
    """The TOC as Go's ``json.MarshalIndent(toc, "", "\\t")`` writes it (no trailing newline)."""
    if toc.entries:
        entries = "[\n" + ",\n".join(_encode_entry(e) for e in toc.entries) + "\n\t]"
    else:
        entries = "null"  # Go marshals the writer's nil slice as null
    text = f'{{\n\t"version": {toc.version},\n\t"entries": {entries}\n}}'
    return text.encode("utf-8", "surrogatepass")


def _decode_entry(raw: object, index: int) -> TOCEntry:
    if not isinstance(raw, dict):
        raise FormatError(f"TOC entry #{index} is {type(raw).__name__}, not an object")
    values: dict[str, Any] = {}
    for key, value in raw.items():
        # Keys as writers spell them first: a layer's TOC has thousands of entries. Go's
        # decoder matches keys case-insensitively, so the folded spelling is the fallback.
        attr = _ATTR_BY_KEY.get(key) or _ATTR_BY_FOLDED_KEY.get(key.lower())
        if attr is None or value is None:
            continue  # unknown keys (e.g. legacy "NumLink") are ignored; null means zero
        value_type = type(value)
        if (value_type is int and 0 <= value < _INT64_LIMIT and attr in _INT_ATTRS) or (
            value_type is str and attr in _STR_ATTRS and value.isascii() and "\0" not in value
        ):
            values[attr] = value  # the common case, checked inline
        else:
            values[attr] = _check_value(attr, value, index)
    name = values.pop("name", "")
    entry_type = values.pop("type", "")
    if entry_type not in ENTRY_TYPES:
        raise FormatError(f"TOC entry #{index} ({name!r:.120}) has unknown type {entry_type!r:.80}")
    return TOCEntry(name=name, type=entry_type, **values)


def _check_value(attr: str, value: object, index: int) -> object:
    if attr in _INT_ATTRS:
        if isinstance(value, bool) or not isinstance(value, int):
            raise FormatError(f"TOC entry #{index}: {attr} must be an integer, got {value!r}")
        if value < 0:
            raise FormatError(f"TOC entry #{index}: {attr} must not be negative, got {value}")
        if value >= _INT64_LIMIT:
            raise FormatError(f"TOC entry #{index}: {attr} does not fit in 64 bits")
        return value
    if attr in _STR_ATTRS:
        if not isinstance(value, str):
            raise FormatError(f"TOC entry #{index}: {attr} must be a string, got {value!r:.80}")
        return _check_text(value, f"TOC entry #{index}: {attr}")
    # xattrs: an object of base64 strings
    if not isinstance(value, dict):
        raise FormatError(f"TOC entry #{index}: xattrs must be an object")
    return _decode_xattrs(value, index)


def _decode_xattrs(value: dict[Any, Any], index: int) -> dict[str, bytes]:
    decoded: dict[str, bytes] = {}
    for name, encoded in value.items():
        _check_text(name, f"TOC entry #{index}: xattr name")
        if encoded is None:
            decoded[name] = b""
            continue
        if not isinstance(encoded, str):
            raise FormatError(f"TOC entry #{index}: xattr {name!r} is not a base64 string")
        try:
            decoded[name] = base64.b64decode(encoded, validate=True)
        except (binascii.Error, ValueError) as error:
            raise FormatError(
                f"TOC entry #{index}: xattr {name!r} is not base64: {error}"
            ) from None
    return decoded


def _check_text(value: str, what: str) -> str:
    """A string from the TOC that names something on a filesystem: valid UTF-8 (JSON can
    escape lone surrogates, which no writer emits and no path can hold), no NUL."""
    if "\0" in value:
        raise FormatError(f"{what} holds a NUL character")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise FormatError(f"{what} is not valid Unicode (a lone surrogate)") from None
    return value


class _ObjectCounter:
    """``object_hook`` that stops a decode once it has made more objects than a TOC of
    ``MAX_TOC_ENTRIES`` entries can hold (an entry and its xattrs)."""

    def __init__(self) -> None:
        self.count = 0

    def __call__(self, document: dict[str, Any]) -> dict[str, Any]:
        self.count += 1
        if self.count > 2 * MAX_TOC_ENTRIES + 1:
            raise FormatError(f"TOC has more than {MAX_TOC_ENTRIES} entries")
        return document


def decode_toc_json(data: bytes) -> TOC:
    """Parse TOC JSON bytes; raises ``FormatError`` for anything that is not a TOC."""
    # Arrays cannot be counted while decoding; a TOC has one (names may hold more "[").
    if data.count(b"[") > MAX_TOC_ENTRIES + 1:
        raise FormatError(f"TOC has more than {MAX_TOC_ENTRIES} arrays")
    with collector_paused():
        return _decode_by_schema(data) or _decode_toc(data)


def _decode_by_schema(data: bytes) -> TOC | None:
    """The TOC by ``tocschema``, when it takes it and nothing in it needs a check of
    the general way; None sends it that way."""
    # A NUL can only come from an escape (the schema cannot see it in a string); the
    # objects are bounded as ``_ObjectCounter`` bounds them. A name holding either
    # text only takes the general way.
    if b"\\u0000" in data or data.count(b"{") > 2 * MAX_TOC_ENTRIES + 1:
        return None
    decoded = tocschema.decode(data)
    if decoded is None:
        return None
    version, raw_entries = decoded
    if len(raw_entries) > MAX_TOC_ENTRIES:
        return None
    entries = []
    for index, raw in enumerate(raw_entries):
        if raw.type not in ENTRY_TYPES:
            return None
        xattrs: dict[str, bytes] = {}
        if raw.xattrs:
            try:
                xattrs = _decode_xattrs(raw.xattrs, index)
            except FormatError:
                return None
        entries.append(
            TOCEntry(
                name=raw.name,
                type=raw.type,
                size=raw.size,
                modtime=raw.modtime,
                link_name=raw.link_name,
                mode=raw.mode,
                uid=raw.uid,
                gid=raw.gid,
                user_name=raw.user_name,
                group_name=raw.group_name,
                offset=raw.offset,
                inner_offset=raw.inner_offset,
                dev_major=raw.dev_major,
                dev_minor=raw.dev_minor,
                xattrs=xattrs,
                digest=raw.digest,
                chunk_offset=raw.chunk_offset,
                chunk_size=raw.chunk_size,
                chunk_digest=raw.chunk_digest,
            )
        )
    return TOC(version=version, entries=entries)


def _decode_toc(data: bytes) -> TOC:
    try:
        document = json.loads(data, object_hook=_ObjectCounter())
    except (UnicodeDecodeError, ValueError) as error:
        raise FormatError(f"TOC is not valid JSON: {error}") from None
    except RecursionError:
        raise FormatError("TOC is not a TOC: JSON nested too deeply") from None
    if not isinstance(document, dict):
        raise FormatError(f"TOC JSON is {type(document).__name__}, not an object")
    folded = {key.lower(): value for key, value in document.items()}
    version = folded.get("version", 0)
    if isinstance(version, bool) or not isinstance(version, int):
        raise FormatError(f"TOC version must be an integer, got {version!r}")
    raw_entries = folded.get("entries")
    if raw_entries is None:
        raw_entries = []
    if not isinstance(raw_entries, list):
        raise FormatError("TOC entries must be an array")
    if len(raw_entries) > MAX_TOC_ENTRIES:
        raise FormatError(f"TOC has {len(raw_entries)} entries, more than {MAX_TOC_ENTRIES}")
    return TOC(version=version, entries=[_decode_entry(e, i) for i, e in enumerate(raw_entries)])
