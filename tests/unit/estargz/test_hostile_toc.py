"""Hostile TOCs (issue 13, items 2 and 3): every one a FormatError, quickly, in bounded memory."""

from __future__ import annotations

import json
import time
import tracemalloc

import pytest
import trio

from lazybuild.errors import DigestMismatchError, FormatError
from lazybuild.estargz import encode_footer, parse_layer
from lazybuild.estargz import index as index_module
from lazybuild.estargz import toc as toc_module
from lazybuild.estargz.gzipmembers import compress_member, inflate_prefix
from lazybuild.estargz.index import MAX_CHUNK_SIZE, ChunkRef, LayerIndex
from lazybuild.estargz.reader import decompress_chunk, read_toc_region, sha256_digest
from lazybuild.estargz.toc import TOC, TOCEntry, decode_toc_json
from lazybuild.estargz.tocmember import MAX_TOC_COMPRESSED_SIZE, extract_toc_json

TOC_JSON = b'{"version": 1, "entries": [{"name": "a", "type": "dir"}]}'


def tar_header(
    name: bytes = b"stargz.index.json",
    size: int = 0,
    *,
    typeflag: bytes = b"0",
    size_field: bytes | None = None,
) -> bytes:
    """One ustar header with a correct checksum and whatever size field a test wants."""
    header = bytearray(512)
    header[: len(name)] = name
    header[100:108] = b"0000644\0"
    header[124:136] = size_field if size_field is not None else b"%011o\0" % size
    header[156:157] = typeflag
    header[257:265] = b"ustar\x0000"
    header[148:156] = b" " * 8
    header[148:156] = b"%06o\0 " % sum(header)
    return bytes(header)


def pad(data: bytes) -> bytes:
    return data + b"\0" * (-len(data) % 512)


def pax_member(records: bytes, json_bytes: bytes = TOC_JSON) -> bytes:
    tar = tar_header(b"PaxHeaders/x", len(records), typeflag=b"x") + pad(records)
    tar += tar_header(size=len(json_bytes)) + pad(json_bytes) + b"\0" * 1024
    return compress_member(tar, 6)


@pytest.mark.timeout(10)
def test_zero_length_pax_record_is_an_error_not_a_hang() -> None:
    with pytest.raises(FormatError, match="PAX record"):
        extract_toc_json(pax_member(b"0 \n"), "layer")
    with pytest.raises(FormatError, match="PAX record"):
        extract_toc_json(pax_member(b"0 path=x\n"), "layer")


@pytest.mark.parametrize(
    "records",
    [
        b"9999 path=stargz.index.json\n",  # length beyond the data
        b"30path=stargz.index.json\n",  # no space after the length
        b"-5 a=b\n",  # a negative length
        b"12 pathxxxxx\n",  # no "="
        b"7 =abc\n",  # an empty key
        b"11 a=bcdefg",  # no newline at its end
        b"14 path=\xff\xfe\xfd\n",  # a path that is not UTF-8
        b"1" * 40 + b" a=b\n",  # a length of 40 digits
    ],
)
def test_malformed_pax_records_are_format_errors(records: bytes) -> None:
    with pytest.raises(FormatError):
        extract_toc_json(pax_member(records), "layer")


def pax_record(key: bytes, value: bytes) -> bytes:
    """``"%d key=value\n"`` whose length counts its own digits, as PAX wants."""
    body = b" " + key + b"=" + value + b"\n"
    length = len(body) + 1
    while len(b"%d" % length) + len(body) != length:
        length = len(b"%d" % length) + len(body)
    return b"%d" % length + body


@pytest.mark.parametrize(
    "size",
    [b"abc", b"-1", b" 12", b"1_0", b"+5", "\N{ARABIC-INDIC DIGIT ONE}".encode(), b"9" * 5000],
)
def test_pax_size_that_is_not_a_decimal_is_a_format_error(size: bytes) -> None:
    with pytest.raises(FormatError):
        extract_toc_json(pax_member(pax_record(b"size", size)), "layer")


def test_pax_records_that_are_right_still_work() -> None:
    records = pax_record(b"path", b"stargz.index.json") + pax_record(b"mtime", b"1.5")
    assert extract_toc_json(pax_member(records), "layer") == TOC_JSON
    sized = pax_record(b"size", b"%d" % len(TOC_JSON))
    assert extract_toc_json(pax_member(sized), "layer") == TOC_JSON


@pytest.mark.parametrize(
    "size_field",
    [b"0o17\0\0\0\0\0\0\0\0", b"+17\0\0\0\0\0\0\0\0\0", b"1_7\0\0\0\0\0\0\0\0\0", b"zz" * 6],
)
def test_tar_size_that_is_not_octal_is_a_format_error(size_field: bytes) -> None:
    tar = tar_header(size_field=size_field) + pad(TOC_JSON) + b"\0" * 1024
    with pytest.raises(FormatError, match="not octal"):
        extract_toc_json(compress_member(tar, 6), "layer")


def test_negative_base256_size_is_a_format_error() -> None:
    tar = tar_header(size_field=b"\xff" * 12) + pad(TOC_JSON) + b"\0" * 1024
    with pytest.raises(FormatError, match="negative"):
        extract_toc_json(compress_member(tar, 6), "layer")


def test_huge_base256_size_is_truncated_not_an_overflow() -> None:
    tar = tar_header(size_field=b"\x80" + b"\xff" * 11) + pad(TOC_JSON) + b"\0" * 1024
    with pytest.raises(FormatError, match="truncated"):
        extract_toc_json(compress_member(tar, 6), "layer")


def test_footer_pointing_at_offset_zero_reads_nothing_more() -> None:
    blob_size = 10 << 30  # a 10 GiB blob whose footer says the TOC starts at 0
    tail = b"\0" * 100 + encode_footer(0)
    reads: list[tuple[int, int]] = []

    async def read_at(offset: int, length: int) -> bytes:
        reads.append((offset, length))
        raise AssertionError("no read may be made")

    async def main() -> None:
        await read_toc_region(read_at, blob_size, tail=tail)

    with pytest.raises(FormatError, match="compressed TOC is at most"):
        trio.run(main)
    assert reads == []
    with pytest.raises(FormatError, match="compressed TOC is at most"):
        parse_layer(tail, blob_size - len(tail), blob_size, None, lambda o, n: b"")


def test_oversized_compressed_toc_member_is_refused() -> None:
    with pytest.raises(FormatError, match="limit"):
        extract_toc_json(b"\0" * (MAX_TOC_COMPRESSED_SIZE + 1), "layer")


def test_deep_json_is_a_format_error() -> None:
    with pytest.raises(FormatError):
        decode_toc_json(b"[" * 100_000 + b"]" * 100_000)
    with pytest.raises(FormatError):
        decode_toc_json(b'{"a":' * 100_000 + b"1" + b"}" * 100_000)


def test_huge_integers_are_format_errors() -> None:
    with pytest.raises(FormatError):
        decode_toc_json(
            b'{"entries": [{"name": "a", "type": "reg", "size": ' + b"9" * 5000 + b"}]}"
        )
    with pytest.raises(FormatError, match="64 bits"):
        decode_toc_json(b'{"entries": [{"name": "a", "type": "reg", "size": %d}]}' % (1 << 63))


def test_entry_count_is_capped_while_decoding(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(toc_module, "MAX_TOC_ENTRIES", 10)
    entries = ",".join('{"name": "f' + str(i) + '", "type": "dir"}' for i in range(11))
    with pytest.raises(FormatError, match="more than 10"):
        decode_toc_json(b'{"entries": [%s]}' % entries.encode())
    with pytest.raises(FormatError, match="more than 10"):
        decode_toc_json(b"[" + b"{}," * 100 + b"{}]")
    with pytest.raises(FormatError, match="more than 10"):
        decode_toc_json(b"[" + b"[]," * 100 + b"[]]")
    entries = ",".join('{"name": "f' + str(i) + '", "type": "dir"}' for i in range(10))
    assert len(decode_toc_json(b'{"entries": [%s]}' % entries.encode()).entries) == 10


@pytest.mark.parametrize(
    "name", ['"a\\u0000b"', '"\\ud800"', '"ok\\udfff"'], ids=["nul", "surrogate", "low-surrogate"]
)
def test_names_no_path_can_hold_are_format_errors(name: str) -> None:
    with pytest.raises(FormatError):
        decode_toc_json(b'{"entries": [{"name": %s, "type": "dir"}]}' % name.encode())


def test_deep_paths_build_without_recursion() -> None:
    name = "/".join(["d"] * 3000) + "/file"  # deeper than Python's recursion limit
    index = LayerIndex(TOC(1, [TOCEntry(name=name, type="symlink", link_name="x")]), 1000)
    node = index.lookup(name)
    assert node is not None and node.type == "symlink"


def test_paths_too_deep_for_their_parents_names_are_refused_quickly() -> None:
    name = "/".join(["a"] * 30_000)  # its parents' names would take ~900 MB
    started = time.perf_counter()
    with pytest.raises(FormatError, match="too deep"):
        LayerIndex(TOC(1, [TOCEntry(name=name, type="dir")]), 1000)
    assert time.perf_counter() - started < 1


def test_root_that_is_not_a_directory_is_refused() -> None:
    with pytest.raises(FormatError, match="root"):
        LayerIndex(TOC(1, [TOCEntry(name="./", type="symlink", link_name="x")]), 1000)
    with pytest.raises(FormatError):
        LayerIndex(TOC(1, [TOCEntry(name="/", type="hardlink", link_name="x")]), 1000)


@pytest.mark.parametrize("modtime", ["0001-01-01T00:00:00+14:00", "9999-12-31T23:59:59-14:00"])
def test_extreme_modtimes_parse(modtime: str) -> None:
    index = LayerIndex(TOC(1, [TOCEntry(name="a", type="dir", modtime=modtime)]), 1)
    node = index.lookup("a")
    assert node is not None and isinstance(node.mtime, int)


def _one_chunk_toc(size: int, **extra: int) -> TOC:
    entry = TOCEntry(name="f", type="reg", size=size, offset=0, chunk_digest="sha256:" + "0" * 64)
    for key, value in extra.items():
        setattr(entry, key, value)
    return TOC(1, [entry])


def test_chunk_size_over_the_cap_is_refused() -> None:
    with pytest.raises(FormatError, match="chunk limit"):
        LayerIndex(_one_chunk_toc(MAX_CHUNK_SIZE + 1), 1 << 40)
    with pytest.raises(FormatError, match="chunk limit"):
        LayerIndex(_one_chunk_toc(10, inner_offset=2 * MAX_CHUNK_SIZE), 1 << 40)
    index = LayerIndex(_one_chunk_toc(MAX_CHUNK_SIZE), 1 << 40)
    node = index.lookup("f")
    assert node is not None
    assert node.chunks[0].end - node.chunks[0].offset <= index_module.MAX_CHUNK_SPAN


def test_a_chunk_that_inflates_to_gigabytes_holds_only_its_size() -> None:
    content = b"x" * 1000
    bomb = compress_member(content + b"\0" * (256 << 20), 9)  # 1000 bytes, then 256 MiB
    chunk = ChunkRef(0, len(bomb), 0, 0, len(content), sha256_digest(content))
    tracemalloc.start()
    try:
        assert decompress_chunk(bomb, chunk) == content
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 4 << 20
    # The inflater stops at the chunk's size even when the digest is wrong.
    wrong = ChunkRef(0, len(bomb), 0, 0, 4000, sha256_digest(content))
    with pytest.raises(DigestMismatchError):
        decompress_chunk(bomb, wrong)


def test_inflate_prefix_skips_and_stops_exactly() -> None:
    data = bytes(range(256)) * 100
    members = compress_member(data[:1000], 6) + compress_member(data[1000:], 6)
    assert inflate_prefix(members, 500, "x", skip=800) == data[800:1300]
    assert inflate_prefix(members, len(data), "x") == data
    with pytest.raises(FormatError, match="expected at least"):
        inflate_prefix(members, len(data) + 1, "x")
    with pytest.raises(FormatError):
        inflate_prefix(members[:-20], len(data), "x")


def test_toc_json_error_messages_stay_short() -> None:
    name = "n" * 100_000
    document = {"entries": [{"name": name, "type": "bogus" * 10_000}]}
    with pytest.raises(FormatError) as caught:
        decode_toc_json(json.dumps(document).encode())
    assert len(str(caught.value)) < 400


def test_toc_offset_hint_of_thousands_of_digits_is_ignored() -> None:
    from lazybuild.estargz.hints import toc_offset_hint
    from lazybuild.oci.descriptor import Descriptor
    from lazybuild.oci.mediatypes import TOC_OFFSET_ANNOTATION

    descriptor = Descriptor(
        "application/vnd.oci.image.layer.v1.tar+gzip",
        "sha256:" + "a" * 64,
        1000,
        annotations={TOC_OFFSET_ANNOTATION: "1" * 5000},
    )
    assert toc_offset_hint(descriptor) is None
