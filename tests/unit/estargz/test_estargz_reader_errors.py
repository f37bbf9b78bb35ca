"""Opening damaged or unusual layers: clear errors, never unverified bytes."""

from __future__ import annotations

import dataclasses
import json

import pytest

from lazybuild.errors import DigestMismatchError, FormatError
from lazybuild.estargz import (
    FOOTER_SIZE,
    decompress_chunk,
    encode_footer,
    encode_legacy_footer,
    parse_layer,
    tail_read_range,
)
from tests.unit.estargz.esgz_helpers import (
    SMALL_CHUNK,
    Member,
    make_tar,
    open_blob,
    pseudo_random,
    read_file,
    replace_toc,
    write,
)

CONTENT = pseudo_random(2 * SMALL_CHUNK + 100, 5)


@pytest.fixture(scope="module")
def layer_blob():  # type: ignore[no-untyped-def]
    blob, result = write(make_tar([Member("d/", b"5"), Member("d/f", data=CONTENT)]))
    return blob, result.toc_digest


def _edit_toc(blob: bytes, edit) -> bytes:  # type: ignore[no-untyped-def]
    layer = open_blob(blob)
    document = json.loads(layer.toc_json)
    edit(document)
    return replace_toc(blob, layer, json.dumps(document).encode())


def test_tail_read_range() -> None:
    assert tail_read_range(10) == (0, 10)
    start, length = tail_read_range(10 << 20)
    assert start + length == 10 << 20 and length >= FOOTER_SIZE


def test_toc_outside_the_tail_needs_read_at(layer_blob) -> None:  # type: ignore[no-untyped-def]
    blob, digest = layer_blob
    tail = blob[-FOOTER_SIZE:]
    with pytest.raises(FormatError, match="read_at"):
        parse_layer(tail, len(blob) - FOOTER_SIZE, len(blob), digest)
    calls = []

    def read_at(offset: int, length: int) -> bytes:
        calls.append((offset, length))
        return bytes(blob[offset : offset + length])

    layer = parse_layer(tail, len(blob) - FOOTER_SIZE, len(blob), digest, read_at)
    assert calls == [(layer.toc_offset, len(blob) - FOOTER_SIZE - layer.toc_offset)]
    with pytest.raises(FormatError, match="returned"):
        parse_layer(tail, len(blob) - FOOTER_SIZE, len(blob), digest, lambda o, n: b"short")


def test_truncated_blob(layer_blob) -> None:  # type: ignore[no-untyped-def]
    blob, digest = layer_blob
    with pytest.raises(FormatError):
        open_blob(blob[:-10], digest)
    with pytest.raises(FormatError, match="does not end at blob size"):
        parse_layer(blob[-100:], 0, len(blob), digest)


def test_bad_footer(layer_blob) -> None:  # type: ignore[no-untyped-def]
    blob, digest = layer_blob
    with pytest.raises(FormatError, match="footer"):
        open_blob(blob[:-FOOTER_SIZE] + b"\0" * FOOTER_SIZE, digest)


def test_toc_offset_out_of_range(layer_blob) -> None:  # type: ignore[no-untyped-def]
    blob, digest = layer_blob
    body = blob[:-FOOTER_SIZE]
    with pytest.raises(FormatError, match=r"layer sha256:ab12: TOC offset \d+ beyond"):
        start, _ = tail_read_range(len(blob))
        bad = body + encode_footer(len(blob) + 5)
        parse_layer(bad[start:], start, len(bad), digest, where="layer sha256:ab12")
    with pytest.raises(FormatError, match=r"corrupt gzip|TOC"):
        open_blob(body + encode_footer(3), digest)  # points into the middle of a member


def test_toc_digest_mismatch(layer_blob) -> None:  # type: ignore[no-untyped-def]
    blob, _ = layer_blob
    with pytest.raises(DigestMismatchError, match="TOC digest"):
        open_blob(blob, "sha256:" + "0" * 64)


def test_corrupted_chunk_is_a_digest_mismatch(layer_blob) -> None:  # type: ignore[no-untyped-def]
    blob, digest = layer_blob
    layer = open_blob(blob, digest)
    node = layer.index.lookup("d/f")
    assert node is not None
    chunk = node.chunks[1]
    lying = dataclasses.replace(chunk, digest="sha256:" + "1" * 64)
    with pytest.raises(DigestMismatchError, match="chunk at offset"):
        decompress_chunk(blob[chunk.offset : chunk.end], lying)
    damaged = bytearray(blob[chunk.offset : chunk.end])
    damaged[len(damaged) // 2] ^= 0xFF
    with pytest.raises((DigestMismatchError, FormatError)):
        decompress_chunk(bytes(damaged), chunk)
    with pytest.raises(FormatError, match="compressed bytes"):
        decompress_chunk(blob[chunk.offset : chunk.end - 1], chunk)
    with pytest.raises(FormatError, match="no digest"):
        decompress_chunk(blob[chunk.offset : chunk.end], dataclasses.replace(chunk, digest=""))


def test_tolerant_toc_fields(layer_blob) -> None:  # type: ignore[no-untyped-def]
    blob, _ = layer_blob

    def edit(document) -> None:  # type: ignore[no-untyped-def]
        for entry in document["entries"]:
            entry["NumLink"] = 0  # legacy CRFS writers
            if entry["type"] == "dir":
                entry["mode"] = 0o40755  # S_IFMT bits in mode
        last = [e for e in document["entries"] if e["name"] == "d/f"][-1]
        last["chunkSize"] = 100  # a final chunk whose size is spelled out

    edited = _edit_toc(blob, edit)
    layer = open_blob(edited)
    directory = layer.index.lookup("d")
    assert directory is not None and directory.mode == 0o755 and directory.nlink == 2
    assert read_file(layer, edited, "d/f") == CONTENT


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (
            lambda d: d["entries"].append({"name": "h", "type": "hardlink", "linkName": "gone"}),
            "gone",
        ),
        (lambda d: d["entries"][-1].update(chunkSize=5), "chunk"),
        (lambda d: d["entries"][-1].update(offset=10**9), "beyond TOC offset"),
        (lambda d: d["entries"].insert(0, {"name": "x", "type": "chunk"}), "follows no file"),
        (lambda d: d["entries"].append({"name": "d/f/sub", "type": "reg"}), "used as a directory"),
    ],
)
def test_inconsistent_tocs(layer_blob, edit, message) -> None:  # type: ignore[no-untyped-def]
    blob, _ = layer_blob
    with pytest.raises(FormatError, match=message):
        open_blob(_edit_toc(blob, edit))


def test_legacy_footer_is_accepted(layer_blob) -> None:  # type: ignore[no-untyped-def]
    blob, _ = layer_blob
    layer = open_blob(blob)
    legacy = blob[:-FOOTER_SIZE] + encode_legacy_footer(layer.toc_offset)
    opened = open_blob(legacy, layer.toc_digest)
    assert opened.footer.legacy and opened.toc_offset == layer.toc_offset
    assert read_file(opened, legacy, "d/f") == CONTENT


def test_hardlink_chains_and_implicit_root(layer_blob) -> None:  # type: ignore[no-untyped-def]
    blob, _ = layer_blob

    def edit(document) -> None:  # type: ignore[no-untyped-def]
        document["entries"] = [e for e in document["entries"] if e["name"] != "d/"]
        document["entries"].append({"name": "/x/h1", "type": "hardlink", "linkName": "d/f"})
        document["entries"].append({"name": "h2", "type": "hardlink", "linkName": "./x/h1"})

    edited = _edit_toc(blob, edit)
    index = open_blob(edited).index
    target = index.lookup("d/f")
    assert target is not None and target is index.lookup("h2") is index.lookup("x/h1")
    assert target.nlink == 3
    implicit = index.lookup("d")
    assert implicit is not None and implicit.implicit and implicit.mode == 0o755
    assert [n.name for n in index.walk()][:2] == ["", ".no.prefetch.landmark"]
