"""The quick TOC decode (``tocschema``) gives what the general decoder gives, or
leaves the TOC to it: the same entries, the same errors."""

from __future__ import annotations

import base64
import json
from typing import Any

import msgspec
import pytest

from lazybuild.errors import FormatError
from lazybuild.estargz import tocschema
from lazybuild.estargz.toc import (
    _KEYS,
    TOC,
    TOCEntry,
    _decode_by_schema,
    _decode_toc,
    decode_toc_json,
    encode_toc_json,
)


def _general(data: bytes) -> TOC | str:
    try:
        return _decode_toc(data)
    except FormatError as error:
        return str(error)


def _decoded(data: bytes) -> TOC | str:
    try:
        return decode_toc_json(data)
    except FormatError as error:
        return str(error)


def _doc(*entries: object, **top: Any) -> bytes:
    return json.dumps({"version": 1, **top, "entries": list(entries)}).encode()


def test_schema_fields_are_the_toc_entry_fields_as_json_spells_them() -> None:
    encoded = [f.encode_name for f in msgspec.structs.fields(tocschema.SchemaEntry)]
    assert encoded == [key for _, key in _KEYS]
    assert [f.name for f in msgspec.structs.fields(tocschema.SchemaEntry)] == [
        attr for attr, _ in _KEYS
    ]


def test_a_written_toc_takes_the_schema_and_decodes_as_the_general_way() -> None:
    toc = TOC(
        version=1,
        entries=[
            TOCEntry(name="", type="dir", mode=0o755, modtime="2024-01-01T00:00:00Z"),
            TOCEntry(
                name="bin/sh",
                type="reg",
                size=9000,
                mode=0o755,
                uid=1000,
                gid=1000,
                user_name="u",
                group_name="g",
                offset=60,
                digest="sha256:" + "a" * 64,
                chunk_size=4096,
                chunk_digest="sha256:" + "b" * 64,
                xattrs={"security.capability": b"\x01\x02", "user.é": b""},
            ),
            TOCEntry(
                name="bin/sh",
                type="chunk",
                offset=400,
                inner_offset=3,
                chunk_offset=4096,
                chunk_digest="sha256:" + "c" * 64,
            ),
            TOCEntry(name="bin/sh2", type="hardlink", link_name="bin/sh"),
            TOCEntry(name="dev/null", type="char", dev_major=1, dev_minor=3),
            TOCEntry(name="a<b>&\u2028\U0001f600", type="symlink", link_name="x\ny"),
        ],
    )
    data = encode_toc_json(toc)
    assert _decode_by_schema(data) == toc
    assert decode_toc_json(data) == _decode_toc(data) == toc


@pytest.mark.parametrize(
    "data",
    [
        _doc({"name": "a", "type": "reg", "NumLink": 1}),  # unknown key: ignored
        _doc({"Name": "a", "TYPE": "reg", "Size": 3}),  # keys match case-insensitively
        _doc({"name": "a", "type": "reg", "size": None}),  # null is zero
        _doc({"name": "a", "type": "reg", "xattrs": {"user.a": None}}),
        _doc({"name": "a", "type": "reg"}, Version=2),
        b'\xef\xbb\xbf{"entries":[{"name":"a","type":"reg"}]}',  # a BOM
        b'{"entries":[{"name":"a","type":"reg","size":NaN}]}',
        b'{"version":1,"entries":null}',
        b'{"entries":[]}',
        b"{}",
    ],
)
def test_what_only_the_general_way_takes_decodes_as_it_does(data: bytes) -> None:
    assert _decoded(data) == _general(data)


@pytest.mark.parametrize(
    "data",
    [
        _doc({"name": "a\u0000", "type": "reg"}),
        b'{"entries":[{"name":"\\ud800","type":"reg"}]}',
        b'{"entries":[{"name":"\\udc00x","type":"reg"}]}',
        b'{"entries":[{"name":"\xed\xa0\x80","type":"reg"}]}',
        b'{"entries":[{"name":"\xff","type":"reg"}]}',
        _doc({"name": "a", "type": "socket"}),
        _doc({"name": "a", "type": "reg", "size": -1}),
        _doc({"name": "a", "type": "reg", "size": 1 << 63}),
        _doc({"name": "a", "type": "reg", "size": 1.0}),
        _doc({"name": "a", "type": "reg", "size": True}),
        _doc({"name": "a", "type": "reg", "mode": "644"}),
        _doc({"name": 1, "type": "reg"}),
        _doc({"name": "a", "type": "reg", "xattrs": {"user.a": "not base64!"}}),
        _doc({"name": "a", "type": "reg", "xattrs": {"user.a": 3}}),
        _doc({"name": "a", "type": "reg", "xattrs": []}),
        _doc("not an entry"),
        b'{"entries":[{"name":"a","type":"reg"}]} trailing',
        b'{"entries":[{"name":"a","type":"reg","size":01}]}',
        b"[]",
        b'{"version":true,"entries":[]}',
        b'{"entries":{}}',
    ],
)
def test_what_the_general_way_refuses_is_refused_with_its_reason(data: bytes) -> None:
    expected = _general(data)
    assert isinstance(expected, str)
    assert _decoded(data) == expected


def test_duplicate_keys_take_the_last_value_either_way() -> None:
    data = b'{"entries":[{"name":"a","name":"b","type":"reg","size":1,"size":2}]}'
    assert _decode_by_schema(data) == _general(data)


def test_xattrs_decode_as_the_general_way_decodes_them() -> None:
    value = base64.b64encode(b"\x00\xff").decode()
    data = _doc({"name": "a", "type": "reg", "xattrs": {"user.b": value, "trusted.a": ""}})
    decoded = _decode_by_schema(data)
    assert decoded is not None
    assert decoded == _general(data)
    assert decoded.entries[0].xattrs == {"user.b": b"\x00\xff", "trusted.a": b""}
