"""A TOC decoded against a strict schema: the quick way for the TOCs writers write.

``json.loads`` makes a dict per entry and ``toc._decode_entry`` then checks every
value in Python; for a 15,000-entry TOC that is most of the time it takes to open a
layer whose image is kept. msgspec checks the same in C while it parses, into objects
the collector does not track.

The schema takes only what the general decoder takes the same way: keys spelled as
writers spell them (Go matches keys case-insensitively; any other key sends the TOC
the general way, which ignores unknown ones), no nulls (zero values there), integers
in [0, 2^63), valid UTF-8 without lone surrogates. What it cannot check (NUL
characters, entry types, xattrs' base64) ``toc.decode_toc_json`` checks, or sends the
TOC the general way, which also says what is wrong with it.
"""

from __future__ import annotations

from typing import Annotated

import msgspec

__all__ = ["SchemaEntry", "decode"]

# Go's int64, and never negative: the general decoder's bounds.
_Int = Annotated[int, msgspec.Meta(ge=0, le=(1 << 63) - 1)]


class SchemaEntry(msgspec.Struct, rename="camel", forbid_unknown_fields=True, gc=False):
    """``toc.TOCEntry`` as JSON spells it (``modtime`` is its own camel case)."""

    name: str
    type: str
    size: _Int = 0
    modtime: str = ""
    link_name: str = ""
    mode: _Int = 0
    uid: _Int = 0
    gid: _Int = 0
    user_name: str = ""
    group_name: str = ""
    offset: _Int = 0
    inner_offset: _Int = 0
    dev_major: _Int = 0
    dev_minor: _Int = 0
    xattrs: dict[str, str] = {}  # base64, decoded by the caller
    digest: str = ""
    chunk_offset: _Int = 0
    chunk_size: _Int = 0
    chunk_digest: str = ""


class _Document(msgspec.Struct, forbid_unknown_fields=True):
    version: int = 0
    entries: list[SchemaEntry] | None = None


_DECODER = msgspec.json.Decoder(_Document)


def decode(data: bytes) -> tuple[int, list[SchemaEntry]] | None:
    """(version, entries) of a TOC the schema takes; None for any other."""
    try:
        document = _DECODER.decode(data)
    except (msgspec.DecodeError, UnicodeDecodeError):
        return None
    return document.version, document.entries or []
