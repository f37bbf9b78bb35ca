"""Fuzzing the eStargz read path: footer, TOC member, TOC JSON, index, chunks, members.

Every byte here comes from a registry before (or instead of) being verified, so each
target holds the invariant in ``fuzzkit`` and, where bytes come out, they are the
right bytes or an error: never other bytes.
"""

from __future__ import annotations

import hashlib
import json
import zlib

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from lazybuild.errors import DigestMismatchError, FormatError
from lazybuild.estargz import decode_toc_json, parse_footer, parse_layer
from lazybuild.estargz.gzipmembers import compress_member, inflate_members, inflate_prefix
from lazybuild.estargz.hints import prefetch_region_hint, toc_offset_hint
from lazybuild.estargz.index import ChunkRef, LayerIndex
from lazybuild.estargz.reader import decompress_chunk
from lazybuild.estargz.tocmember import extract_toc_json
from lazybuild.oci.descriptor import Descriptor
from lazybuild.oci.mediatypes import PREFETCH_REGION_ANNOTATION, TOC_OFFSET_ANNOTATION
from tests.fuzz.fuzzkit import (
    TEST_TIMEOUT_SECONDS,
    bytes_like,
    holds_invariant,
    mutated,
    seed,
    seeds,
)

pytestmark = pytest.mark.timeout(TEST_TIMEOUT_SECONDS)

LAYER = seed("layer", "small.esgz")
LAYER_TOC = parse_layer(LAYER, 0, len(LAYER), None)


@given(bytes_like("footer", max_size=128))
@example(b"\x1f\x8b\x08\x04" + b"\0" * 6 + b"\xff\xff" + b"SG" * 30)
def test_footer(data: bytes) -> None:
    footer = holds_invariant(lambda: parse_footer(data))
    if footer is not None:
        assert 0 <= footer.toc_offset < 1 << 63
        assert footer.size in (47, 51)


@given(bytes_like("toc_member"))
@example(compress_member(b"\0" * 512, 6))
def test_toc_member(data: bytes) -> None:
    toc_json = holds_invariant(lambda: extract_toc_json(data, "fuzz"))
    if toc_json is not None:
        assert len(toc_json) <= len(zlib.decompressobj(31).decompress(data))


def _tar_member(tar: bytes) -> bytes:
    return compress_member(tar, 1)


@given(st.sampled_from(seeds("toc_member")).flatmap(lambda m: mutated(_inflated(m), 8)))
def test_toc_member_tar_structure(tar: bytes) -> None:
    """Mutations of the tar inside the member (headers, PAX records, sizes), not of the
    compressed bytes, which mostly only break the deflate stream."""
    holds_invariant(lambda: extract_toc_json(_tar_member(tar), "fuzz"))


def _inflated(member: bytes) -> bytes:
    return zlib.decompressobj(31).decompress(member)


def _index(data: bytes) -> LayerIndex:
    return LayerIndex(decode_toc_json(data), data_end=1 << 20, where="fuzz")


@given(bytes_like("toc_json"))
@example(b"[" * 50_000)
@example(b'{"entries":[{"name":"' + b"a/" * 30_000 + b'","type":"dir"}]}')
@example(b'{"entries":[{"name":"x","type":"hardlink","linkName":"x"}]}')
@example(b'{"entries":[{"name":"/","type":"reg","size":1}]}')
def test_toc_json_and_index(data: bytes) -> None:
    index = holds_invariant(lambda: _index(data))
    if index is not None:
        nodes = list(index.walk())
        assert nodes[0] is index.root
        for path, node in index.paths():
            assert index.lookup(path) is node
            covered = 0
            for chunk in node.chunks:
                assert chunk.chunk_offset == covered and chunk.size > 0
                assert chunk.offset < chunk.end
                covered += chunk.size
            assert covered in (0, node.size)


_FIELDS = [
    "name",
    "type",
    "size",
    "modtime",
    "linkName",
    "mode",
    "offset",
    "innerOffset",
    "chunkOffset",
    "chunkSize",
    "chunkDigest",
    "digest",
    "xattrs",
    "devMajor",
]
_VALUES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**64), 2**64),
    st.floats(allow_nan=False),
    st.text(max_size=40),
    st.sampled_from(["reg", "dir", "chunk", "hardlink", "symlink", "/", "./", "..", "a/../.."]),
    st.dictionaries(st.text(max_size=8), st.one_of(st.text(max_size=8), st.integers())),
    st.lists(st.integers(), max_size=3),
)


@st.composite
def edited_toc(draw: st.DrawFn) -> bytes:
    """The seed TOC with entries' fields set to odd values, entries dropped or repeated."""
    document = json.loads(seed("toc_json", "small.json"))
    entries = document["entries"]
    for _ in range(draw(st.integers(1, 8))):
        action = draw(st.sampled_from(["set", "drop", "dup", "move"]))
        position = draw(st.integers(0, len(entries) - 1)) if entries else 0
        if action == "set" and entries:
            entries[position][draw(st.sampled_from(_FIELDS))] = draw(_VALUES)
        elif action == "drop" and entries:
            del entries[position]
        elif action == "dup" and entries:
            entries.insert(draw(st.integers(0, len(entries))), dict(entries[position]))
        elif action == "move" and entries:
            entries.insert(draw(st.integers(0, len(entries))), entries.pop(position))
    return json.dumps(document).encode()


@given(edited_toc())
def test_index_from_edited_toc(data: bytes) -> None:
    holds_invariant(lambda: _index(data))


@given(st.integers(0, len(LAYER)), bytes_like("layer", max_size=len(LAYER) + 64))
@example(0, LAYER[:-51] + LAYER[-51:].replace(b"%016x" % LAYER_TOC.toc_offset, b"0" * 16))
def test_whole_layer(tail_start: int, blob: bytes) -> None:
    """Footer → TOC → index of a mutated layer, read from any tail start."""
    tail_start = min(tail_start, len(blob))

    def read_at(offset: int, length: int) -> bytes:
        return blob[offset : offset + length]

    holds_invariant(lambda: parse_layer(blob[tail_start:], tail_start, len(blob), None, read_at))


def _chunks() -> list[tuple[ChunkRef, bytes]]:
    """Every chunk of the seed layer with its right content."""
    out = []
    content = dict(_file_contents())
    for path, node in LAYER_TOC.index.paths():
        for chunk in node.chunks:
            data = content[path][chunk.chunk_offset : chunk.chunk_offset + chunk.size]
            out.append((chunk, data))
    return out


def _file_contents() -> list[tuple[str, bytes]]:
    big = bytes(range(256)) * 40
    return [
        ("etc/hostname", b"fuzz\n"),
        ("bin/big", big),
        ("bin/link", big),
        (".no.prefetch.landmark", b"\x0f"),
    ]


CHUNKS = _chunks()


@given(st.sampled_from(CHUNKS), st.data())
def test_verified_chunk_is_right_or_an_error(
    chunk_and_content: tuple[ChunkRef, bytes], data: st.DataObject
) -> None:
    """Mutated compressed bytes: the chunk's own bytes or an error, never other bytes."""
    chunk, content = chunk_and_content
    compressed = data.draw(mutated(LAYER[chunk.offset : chunk.end]))
    # A fetch hands over exactly the range; a mutation that changed the length is
    # another range, which the caller refuses before decompressing.
    end = chunk.offset + len(compressed)
    moved = ChunkRef(
        chunk.offset, end, chunk.inner_offset, chunk.chunk_offset, chunk.size, chunk.digest
    )
    result = holds_invariant(
        lambda: decompress_chunk(compressed, moved), allowed=(FormatError, DigestMismatchError)
    )
    assert result is None or result == content


@given(
    st.lists(st.binary(max_size=300), min_size=1, max_size=5),
    st.lists(st.integers(0, 2000), max_size=4),
    st.data(),
)
def test_gzip_member_boundaries(
    payloads: list[bytes], cuts: list[int], data: st.DataObject
) -> None:
    """Members cut into pieces anywhere inflate to their payloads; mutated ones to an
    error or to what zlib itself makes of them."""
    members = b"".join(compress_member(p, 6) for p in payloads)
    points = sorted({min(c, len(members)) for c in cuts})
    pieces = [members[a:b] for a, b in zip([0, *points], [*points, len(members)], strict=True)]
    assert b"".join(inflate_members(pieces)) == b"".join(payloads)
    expected = b"".join(payloads)
    for length in {0, len(expected) // 2, len(expected)}:
        assert inflate_prefix(members, length, "fuzz") == expected[:length]
    broken = data.draw(mutated(members))
    out = holds_invariant(lambda: b"".join(inflate_members([broken])))
    if out is not None:
        assert out == _reference_inflate(broken)


def _reference_inflate(data: bytes) -> bytes:
    out = b""
    while data:
        inflater = zlib.decompressobj(31)
        out += inflater.decompress(data)
        data = inflater.unused_data
    return out


def test_seed_chunks_are_right() -> None:
    for chunk, content in CHUNKS:
        assert decompress_chunk(LAYER[chunk.offset : chunk.end], chunk) == content
        assert chunk.digest == "sha256:" + hashlib.sha256(content).hexdigest()


@given(
    st.text(max_size=40) | st.from_regex(r"[0-9]{1,6000}", fullmatch=True), st.integers(0, 2**64)
)
def test_layout_hints(value: str, size: int) -> None:
    """Hints come from a manifest's annotations: ignored unless plausible, never an error."""
    descriptor = Descriptor(
        "application/vnd.oci.image.layer.v1.tar+gzip",
        "sha256:" + "a" * 64,
        size,
        annotations={TOC_OFFSET_ANNOTATION: value, PREFETCH_REGION_ANNOTATION: value},
    )
    for hint in (toc_offset_hint, prefetch_region_hint):
        offset = holds_invariant(lambda hint=hint: hint(descriptor), allowed=())  # type: ignore[misc]
        assert offset is None or 0 < offset <= size
