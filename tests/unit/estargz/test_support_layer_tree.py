"""The tests' own layer reader (tests.support.trees.layer_tree) never hides reader errors.

Interop and convert tests compare layers through ``layer_tree``; if it fell back to
``tarfile`` whenever lazybuild's eStargz reader failed, a broken chunk or TOC would
still compare equal. Only layers that are not stargz may go through ``tarfile``.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest
import zstandard

from lazybuild.errors import DigestMismatchError
from lazybuild.estargz import FOOTER_SIZE, LayerFormat, encode_legacy_footer
from tests.support.trees import layer_format, layer_tree
from tests.unit.estargz.esgz_helpers import (
    SMALL_CHUNK,
    Member,
    make_tar,
    open_blob,
    pseudo_random,
    replace_toc,
    write,
)

MEMBERS = [
    Member("d/", b"5"),
    Member("d/f", data=pseudo_random(2 * SMALL_CHUNK + 100, 9)),
    Member("d/small", data=b"small\n"),
]


def _save(tmp_path: Path, name: str, data: bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


def test_plain_layers_and_estargz_give_the_same_tree(tmp_path: Path) -> None:
    tar = make_tar(MEMBERS)
    blob, _ = write(tar)
    paths = {
        LayerFormat.ESTARGZ: _save(tmp_path, "esgz", blob),
        LayerFormat.GZIP: _save(tmp_path, "gz", gzip.compress(tar)),
        LayerFormat.ZSTD: _save(tmp_path, "zst", zstandard.ZstdCompressor().compress(tar)),
        LayerFormat.UNCOMPRESSED: _save(tmp_path, "tar", tar),
    }
    trees = {}
    for kind, path in paths.items():
        assert layer_format(path) is kind
        trees[kind] = layer_tree(path)
    assert set(trees[LayerFormat.ESTARGZ].entries) == {"d", "d/f", "d/small"}
    for kind, tree in trees.items():
        assert tree == trees[LayerFormat.ESTARGZ], kind


def test_legacy_stargz_goes_through_the_stargz_reader(tmp_path: Path) -> None:
    blob, _ = write(make_tar(MEMBERS))
    layer = open_blob(blob)
    legacy = blob[:-FOOTER_SIZE] + encode_legacy_footer(layer.toc_offset)
    path = _save(tmp_path, "legacy", legacy)
    assert layer_format(path) is LayerFormat.LEGACY_STARGZ
    tree = layer_tree(path)
    assert "stargz.index.json" not in tree.entries  # read by the TOC, not as a tar
    assert tree.entries["d/small"].size == len(b"small\n")


def test_a_chunk_digest_mismatch_in_an_estargz_layer_propagates(tmp_path: Path) -> None:
    blob, _ = write(make_tar(MEMBERS))
    layer = open_blob(blob)
    document = json.loads(layer.toc_json)
    chunks = [e for e in document["entries"] if e["name"] == "d/f" or e["type"] == "chunk"]
    chunks[-1]["chunkDigest"] = "sha256:" + "0" * 64
    damaged = _save(tmp_path, "damaged", replace_toc(blob, layer, json.dumps(document).encode()))
    # The same blob is still a valid tar.gz, which a tarfile fallback would read happily.
    with gzip.open(damaged) as stream:
        assert len(stream.read()) > 2 * SMALL_CHUNK
    with pytest.raises(DigestMismatchError, match="chunk at offset"):
        layer_tree(damaged)


def test_a_gzip_layer_with_a_toc_but_no_footer_is_refused(tmp_path: Path) -> None:
    blob, _ = write(make_tar(MEMBERS))
    # Cut off the footer: a multi-member gzip whose tar carries stargz.index.json.
    path = _save(tmp_path, "no-footer", blob[:-FOOTER_SIZE])
    assert layer_format(path) is LayerFormat.GZIP
    with pytest.raises(AssertionError, match="stargz TOC entry but no stargz footer"):
        layer_tree(path)
