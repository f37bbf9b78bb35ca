"""Reading chunks that start inside a gzip member (a non-zero ``innerOffset``).

lazybuild's writer (like the reference's) starts a new member at every chunk, so these
blobs are put together by hand: several files and chunks share members, and some
members start with a tar header, so that no entry has ``innerOffset`` 0 there.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import tarfile
from typing import Any

import pytest

from lazybuild.errors import DigestMismatchError
from lazybuild.estargz import encode_footer
from tests.support.trees import estargz_tree, tar_tree
from tests.unit.estargz.esgz_helpers import open_blob, pseudo_random, read_file

A = b"file a\n"
B = pseudo_random(1500, 11)
C1 = pseudo_random(700, 12)  # first chunk of c, in the member with a and b
C2 = pseudo_random(900, 13)  # second chunk of c, alone in the next member
D = b"d starts after its header\n"
E = pseudo_random(3000, 14)


def _header(name: str, size: int = 0, kind: bytes = tarfile.REGTYPE) -> bytes:
    info = tarfile.TarInfo(name)
    info.type, info.size, info.mtime = kind, size, 1_700_000_000
    info.mode = 0o755 if kind == tarfile.DIRTYPE else 0o644
    return info.tobuf(format=tarfile.USTAR_FORMAT)


def _pad(data: bytes) -> bytes:
    return data + b"\0" * (-len(data) % 512)


def _digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _reg(
    name: str, size: int, offset: int, inner: int, chunk: bytes, **more: Any
) -> dict[str, Any]:
    return {
        "name": name,
        "type": "reg",
        "size": size,
        "mode": 0o644,
        "modtime": "2023-11-14T22:13:20Z",
        "offset": offset,
        "innerOffset": inner,
        "chunkDigest": _digest(chunk),
        **more,
    }


def _blob() -> tuple[bytes, dict[str, Any]]:
    """A gzip tar with TOC and footer whose chunks mostly sit inside shared members."""
    members = [
        _header("dir/", kind=tarfile.DIRTYPE) + _header("dir/a", len(A)),
        # a, then b's header and b, then c's header and c's first chunk.
        _pad(A) + _header("dir/b", len(B)) + _pad(B) + _header("dir/c", len(C1 + C2)) + C1,
        _pad(C1 + C2)[len(C1) :],
        # Members that start with the header: no entry has innerOffset 0 in them.
        _header("dir/d", len(D)) + _pad(D),
        _header("dir/e", len(E)) + _pad(E),
    ]
    compressed = [gzip.compress(m, mtime=0) for m in members]
    offsets = [sum(len(c) for c in compressed[:i]) for i in range(len(compressed))]
    b_inner = len(_pad(A)) + 512
    c_inner = b_inner + len(_pad(B)) + 512
    entries = [
        {"name": "dir/", "type": "dir", "mode": 0o755, "modtime": "2023-11-14T22:13:20Z"},
        _reg("dir/a", len(A), offsets[1], 0, A, digest=_digest(A)),
        _reg("dir/b", len(B), offsets[1], b_inner, B, digest=_digest(B)),
        _reg(
            "dir/c",
            len(C1 + C2),
            offsets[1],
            c_inner,
            C1,
            digest=_digest(C1 + C2),
            chunkSize=len(C1),
        ),
        {
            "name": "dir/c",
            "type": "chunk",
            "offset": offsets[2],
            "chunkOffset": len(C1),
            "chunkSize": len(C2),
            "chunkDigest": _digest(C2),
        },
        _reg("dir/d", len(D), offsets[3], 512, D, digest=_digest(D)),
        _reg("dir/e", len(E), offsets[4], 512, E, digest=_digest(E)),
    ]
    toc = {"version": 1, "entries": entries}
    toc_json = json.dumps(toc, indent="\t").encode()
    toc_tar = _header("stargz.index.json", len(toc_json)) + _pad(toc_json) + b"\0" * 1024
    toc_offset = sum(len(c) for c in compressed)
    blob = b"".join(compressed) + gzip.compress(toc_tar, mtime=0) + encode_footer(toc_offset)
    return blob, toc


def test_chunks_inside_shared_members_read_back_verified() -> None:
    blob, _ = _blob()
    layer = open_blob(blob)
    for path, content in [
        ("dir/a", A),
        ("dir/b", B),
        ("dir/c", C1 + C2),
        ("dir/d", D),
        ("dir/e", E),
    ]:
        assert read_file(layer, blob, path) == content, path
    b_node = layer.index.lookup("dir/b")
    c_node = layer.index.lookup("dir/c")
    assert b_node is not None and c_node is not None
    assert b_node.chunks[0].inner_offset == len(_pad(A)) + 512
    assert [c.inner_offset for c in c_node.chunks] == [b_node.chunks[0].inner_offset + 2048, 0]
    assert [c.size for c in c_node.chunks] == [len(C1), len(C2)]


def test_the_tree_through_the_reader_equals_the_tar() -> None:
    blob, _ = _blob()
    from_tar = tar_tree(io.BytesIO(gzip.decompress(blob)))
    del from_tar.entries["stargz.index.json"]
    assert estargz_tree(blob) == from_tar


@pytest.mark.parametrize("path", ["dir/b", "dir/d"])
def test_a_wrong_inner_offset_fails_the_chunk_digest(path: str) -> None:
    blob, toc = _blob()
    (entry,) = [e for e in toc["entries"] if e["name"] == path]
    entry["innerOffset"] += 1
    toc_json = json.dumps(toc, indent="\t").encode()
    toc_tar = _header("stargz.index.json", len(toc_json)) + _pad(toc_json) + b"\0" * 1024
    toc_offset = open_blob(blob).toc_offset
    shifted = blob[:toc_offset] + gzip.compress(toc_tar, mtime=0) + encode_footer(toc_offset)
    layer = open_blob(shifted)
    assert read_file(layer, shifted, "dir/a") == A
    with pytest.raises(DigestMismatchError):
        read_file(layer, shifted, path)
