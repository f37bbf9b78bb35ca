from __future__ import annotations

import json

import pytest

from lazybuild.errors import FormatError
from lazybuild.estargz import TOC, TOCEntry, decode_toc_json, encode_toc_json
from lazybuild.estargz.gojson import quote

KNOWN_ENTRY = TOCEntry(
    name="usr/bin/<a&b>",
    type="reg",
    size=10485760,
    modtime="2024-01-01T00:00:00Z",
    mode=493,
    uid=1000,
    gid=0,
    user_name="user",
    offset=4096,
    xattrs={"user.z": b"\x00\xff", "security.a": b""},
    digest="sha256:aa",
    chunk_size=4194304,
    chunk_digest="sha256:bb",
)
KNOWN_JSON = (
    b"{\n"
    b'\t"version": 1,\n'
    b'\t"entries": [\n'
    b"\t\t{\n"
    b'\t\t\t"name": "usr/bin/\\u003ca\\u0026b\\u003e",\n'
    b'\t\t\t"type": "reg",\n'
    b'\t\t\t"size": 10485760,\n'
    b'\t\t\t"modtime": "2024-01-01T00:00:00Z",\n'
    b'\t\t\t"mode": 493,\n'
    b'\t\t\t"uid": 1000,\n'
    b'\t\t\t"userName": "user",\n'
    b'\t\t\t"offset": 4096,\n'
    b'\t\t\t"xattrs": {\n'
    b'\t\t\t\t"security.a": "",\n'
    b'\t\t\t\t"user.z": "AP8="\n'
    b"\t\t\t},\n"
    b'\t\t\t"digest": "sha256:aa",\n'
    b'\t\t\t"chunkSize": 4194304,\n'
    b'\t\t\t"chunkDigest": "sha256:bb"\n'
    b"\t\t},\n"
    b"\t\t{\n"
    b'\t\t\t"name": "",\n'
    b'\t\t\t"type": "dir"\n'
    b"\t\t}\n"
    b"\t]\n"
    b"}"
)


def test_exact_bytes_of_a_known_toc() -> None:
    toc = TOC(version=1, entries=[KNOWN_ENTRY, TOCEntry(name="", type="dir")])
    assert encode_toc_json(toc) == KNOWN_JSON
    assert decode_toc_json(KNOWN_JSON) == toc


def test_empty_toc_is_null_like_go() -> None:
    assert encode_toc_json(TOC(1, [])) == b'{\n\t"version": 1,\n\t"entries": null\n}'
    assert decode_toc_json(b'{"version": 1, "entries": null}') == TOC(1, [])


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("plain", '"plain"'),
        ("tab\there\nnl\rcr", '"tab\\there\\nnl\\rcr"'),
        ('quote" back\\', '"quote\\" back\\\\"'),
        ("\b\f", '"\\b\\f"'),
        ("\x00\x01\x1f\x7f", '"\\u0000\\u0001\\u001f\x7f"'),
        ("\u2028\u2029", '"\\u2028\\u2029"'),
        ("ñ€😀", '"ñ€😀"'),
        ("bad\udcffbyte", '"bad\ufffdbyte"'),
    ],
)
def test_go_string_quoting(text: str, expected: str) -> None:
    assert quote(text) == expected


def test_tolerant_reader() -> None:
    data = json.dumps(
        {
            "version": 1,
            "entries": [
                {"name": "a", "type": "dir", "NumLink": 3, "Mode": 16877, "unknown": [1]},
                {"name": "a/f", "type": "reg", "size": 5, "uid": None, "chunkSize": 5},
            ],
        }
    ).encode()
    toc = decode_toc_json(data)
    assert toc.entries[0] == TOCEntry(name="a", type="dir", mode=16877)
    assert toc.entries[1] == TOCEntry(name="a/f", type="reg", size=5, chunk_size=5)


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"not json",
        b"[]",
        b'{"version": "1", "entries": []}',
        b'{"version": 1, "entries": {}}',
        b'{"version": 1, "entries": [1]}',
        b'{"version": 1, "entries": [{"name": "a", "type": "socket"}]}',
        b'{"version": 1, "entries": [{"name": "a", "type": "reg", "size": "5"}]}',
        b'{"version": 1, "entries": [{"name": "a", "type": "reg", "size": -5}]}',
        b'{"version": 1, "entries": [{"name": 5, "type": "reg"}]}',
        b'{"version": 1, "entries": [{"name": "a", "type": "reg", "xattrs": {"k": "!!"}}]}',
        b'{"version": 1, "entries": [{"name": "a", "type": "reg", "xattrs": []}]}',
        b"\xff\xfe",
    ],
)
def test_junk_is_a_format_error(data: bytes) -> None:
    with pytest.raises(FormatError):
        decode_toc_json(data)
