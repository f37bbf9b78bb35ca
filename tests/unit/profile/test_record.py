"""The record file: ctr-remote's JSON-lines format, both ways."""

from __future__ import annotations

from pathlib import Path

import pytest

from lazybuild.errors import FormatError
from lazybuild.profile.record import (
    RecordEntry,
    decode_record,
    encode_record,
    read_record,
    record_paths,
    write_record,
)

DIGEST = "sha256:" + "ab" * 32

# Written by `ctr-remote image optimize --record-out` (stargz-snapshotter's
# recorder.Entry through Go's json.Encoder), for the tiny test image.
CTR_REMOTE_RECORD = (
    '{"path":"usr/bin/cat","manifestDigest":"' + DIGEST + '","layerIndex":1}\n'
    '{"path":"usr/lib/x86_64-linux-gnu/libc.so.6","manifestDigest":"' + DIGEST + '",'
    '"layerIndex":0}\n'
    '{"path":"hello.txt","manifestDigest":"' + DIGEST + '","layerIndex":2}\n'
).encode()


def test_entries_encode_as_go_json_encoder_does() -> None:
    entries = [
        RecordEntry("usr/bin/cat", DIGEST, 1),
        RecordEntry("usr/lib/x86_64-linux-gnu/libc.so.6", DIGEST, 0),
        RecordEntry("hello.txt", DIGEST, 2),
    ]
    assert encode_record(entries) == CTR_REMOTE_RECORD
    assert decode_record(CTR_REMOTE_RECORD) == entries


def test_optional_fields_are_omitted_like_omitempty() -> None:
    assert encode_record([RecordEntry("a")]) == b'{"path":"a"}\n'
    assert encode_record([RecordEntry("a", None, 0)]) == b'{"path":"a","layerIndex":0}\n'


def test_read_ranges_of_big_files_round_trip_after_the_go_fields() -> None:
    entry = RecordEntry("usr/lib/jvm/lib/modules", DIGEST, 1, ((0, 65536), (9 << 20, 131072)))
    line = encode_record([entry])
    assert line.endswith(b',"layerIndex":1,"readRanges":[[0,65536],[9437184,131072]]}\n')
    assert decode_record(line) == [entry]


def test_strings_are_escaped_as_go_does() -> None:
    line = encode_record([RecordEntry('a<b>&"c\n')])
    assert line == b'{"path":"a\\u003cb\\u003e\\u0026\\"c\\n"}\n'
    assert decode_record(line)[0].path == 'a<b>&"c\n'


def test_decoder_takes_any_whitespace_between_values_and_cleans_paths() -> None:
    data = b' {"path":"/usr/bin/x"}{"path":"./etc//passwd", "layerIndex": 3}\n\n'
    assert decode_record(data) == [RecordEntry("usr/bin/x"), RecordEntry("etc/passwd", None, 3)]


@pytest.mark.parametrize(
    "data",
    [
        b"[1]",
        b'{"layerIndex":1}',
        b'{"path":""}',
        b'{"path":"/"}',
        b'{"path":"a","layerIndex":-1}',
        b'{"path":"a","layerIndex":true}',
        b'{"path":"a","manifestDigest":3}',
        b'{"path":"a","readRanges":[[0]]}',
        b'{"path":"a","readRanges":[[0,-5]]}',
        b'{"path":"a","readRanges":{"0":1}}',
        b'{"path":"a"',
        b"\xff",
    ],
)
def test_malformed_records_are_format_errors(data: bytes) -> None:
    with pytest.raises(FormatError):
        decode_record(data, "rec")


def test_paths_keep_first_occurrence_order() -> None:
    entries = [RecordEntry("b"), RecordEntry("a", DIGEST, 0), RecordEntry("b", DIGEST, 1)]
    assert record_paths(entries) == ["b", "a"]


def test_write_then_read(tmp_path: Path) -> None:
    target = tmp_path / "record.json"
    entries = [RecordEntry("x", DIGEST, 0)]
    write_record(target, entries)
    assert read_record(target) == entries
    assert [p.name for p in tmp_path.iterdir()] == ["record.json"]


def test_unreadable_record_is_a_format_error(tmp_path: Path) -> None:
    with pytest.raises(FormatError, match="cannot read record"):
        read_record(tmp_path / "missing")
