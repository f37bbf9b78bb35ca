"""Local layers as cached eStargz blobs: one compression per layer and options, a
sidecar written after the blob, nothing half-written ever read back."""

from __future__ import annotations

import gzip
import hashlib
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trio

from lazybuild.estargz.writer import WriterOptions, write_estargz
from lazybuild.exporter.layerblobs import (
    LayerBlob,
    LayerBlobError,
    local_layer_blob,
    local_layer_blobs,
    writer_fingerprint,
)
from lazybuild.image import layerrewrite
from lazybuild.oci import mediatypes
from lazybuild.worker.layers import LocalLayer
from lazybuild.worker.layerstore import LayerStore
from tests.support.trees import layer_tree
from tests.unit.estargz.esgz_helpers import open_blob, read_file

OPTIONS = WriterOptions(chunk_size=64 * 1024, workers=2)


@pytest.fixture
def store(tmp_path: Path) -> LayerStore:
    return LayerStore(tmp_path / "state")


def _make_layer(store: LayerStore, layer_id: str = "l1", seed: bytes = b"") -> LocalLayer:
    root = store.layers_dir / layer_id
    (root / "app" / "sub").mkdir(parents=True)
    (root / "app" / "main.py").write_bytes(b"print('hi')\n" + seed)
    (root / "app" / "big.bin").write_bytes(os.urandom(200_000))
    os.link(root / "app" / "main.py", root / "app" / "main-link.py")
    os.symlink("main.py", root / "app" / "sub" / "link")
    os.setxattr(root / "app" / "main.py", "user.note", b"x")
    return LocalLayer(layer_id, root)


@pytest.fixture
def compressions(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """Every call of the eStargz writer, by output file name."""
    calls: list[str] = []

    def counting(tar_in: Any, out: Any, options: WriterOptions) -> Any:
        calls.append(str(getattr(out, "name", "")))
        return write_estargz(tar_in, out, options)

    monkeypatch.setattr(layerrewrite, "write_estargz", counting)
    yield calls


def _blob(layer: LocalLayer, store: LayerStore, **kwargs: Any) -> LayerBlob:
    options = kwargs.pop("options", OPTIONS)
    epoch = kwargs.pop("source_date_epoch", None)

    async def main() -> LayerBlob:
        return await local_layer_blob(layer, store, options, source_date_epoch=epoch)

    return trio.run(main)


def test_blob_is_the_layer_as_estargz_with_descriptor_annotations(store: LayerStore) -> None:
    layer = _make_layer(store)
    blob = _blob(layer, store)
    data = blob.path.read_bytes()
    assert blob.path.parent == store.blobs_dir
    assert blob.descriptor.media_type == mediatypes.OCI_LAYER_GZIP
    assert blob.descriptor.digest == "sha256:" + hashlib.sha256(data).hexdigest()
    assert blob.descriptor.size == len(data)
    uncompressed = gzip.decompress(data)
    assert blob.diff_id == "sha256:" + hashlib.sha256(uncompressed).hexdigest()
    annotations = blob.descriptor.annotations
    assert annotations[mediatypes.UNCOMPRESSED_SIZE_ANNOTATION] == str(len(uncompressed))
    opened = open_blob(data, annotations[mediatypes.TOC_DIGEST_ANNOTATION])  # TOC verified
    assert read_file(opened, data, "app/main.py") == b"print('hi')\n"
    tree = layer_tree(blob.path)
    assert tree.entries["app/sub/link"].link == "main.py"
    assert tree.entries["app/main.py"].xattrs == (("user.note", b"x"),)
    assert frozenset({"app/main.py", "app/main-link.py"}) in tree.hardlinks


def test_same_layer_twice_compresses_once(store: LayerStore, compressions: list[str]) -> None:
    layer = _make_layer(store)
    first = _blob(layer, store)
    second = _blob(layer, store)
    assert first == second
    assert len(compressions) == 1


def test_sidecar_holds_descriptor_and_diff_id(store: LayerStore) -> None:
    layer = _make_layer(store)
    blob = _blob(layer, store)
    sidecar = blob.path.with_suffix(".json")
    document = json.loads(sidecar.read_bytes())
    assert document["descriptor"] == blob.descriptor.to_json()
    assert document["diff_id"] == blob.diff_id
    assert blob.path.name.startswith(f"{layer.id}-{writer_fingerprint(OPTIONS, None)}")
    assert sorted(p.name for p in store.blobs_dir.iterdir()) == sorted(
        [blob.path.name, sidecar.name]
    )
    assert list(store.staging_dir.iterdir()) == []  # temp tar and blob are gone


def test_options_and_epoch_that_shape_bytes_make_new_blobs(
    store: LayerStore, compressions: list[str]
) -> None:
    layer = _make_layer(store)
    digests = {
        _blob(layer, store).descriptor.digest,
        _blob(layer, store, options=WriterOptions(chunk_size=32 * 1024)).descriptor.digest,
        _blob(layer, store, source_date_epoch=0).descriptor.digest,
        _blob(
            layer, store, options=WriterOptions(chunk_size=64 * 1024, prioritized_files=["app"])
        ).descriptor.digest,
    }
    assert len(digests) == 4
    assert len(compressions) == 4
    # The worker count does not change the bytes, so it does not change the key.
    _blob(layer, store, options=WriterOptions(chunk_size=64 * 1024, workers=1))
    assert len(compressions) == 4


def test_a_blob_without_its_sidecar_is_written_again(
    store: LayerStore, compressions: list[str]
) -> None:
    """A crash between renaming the blob in and writing the sidecar."""
    layer = _make_layer(store)
    blob = _blob(layer, store)
    blob.path.with_suffix(".json").unlink()
    assert _blob(layer, store) == blob
    assert len(compressions) == 2


@pytest.mark.parametrize("damage", ["truncated blob", "bad sidecar", "missing blob"])
def test_damaged_cache_entries_are_not_used(
    store: LayerStore, compressions: list[str], damage: str
) -> None:
    layer = _make_layer(store)
    blob = _blob(layer, store)
    if damage == "truncated blob":
        with blob.path.open("r+b") as f:
            f.truncate(blob.descriptor.size - 1)
    elif damage == "bad sidecar":
        blob.path.with_suffix(".json").write_text("{not json")
    else:
        blob.path.unlink()
    assert _blob(layer, store) == blob
    assert blob.path.stat().st_size == blob.descriptor.size
    assert len(compressions) == 2


def test_a_failed_compression_leaves_nothing_behind(
    store: LayerStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    layer = _make_layer(store)

    def broken(tar_in: Any, out: Any, options: WriterOptions) -> Any:
        out.write(b"half a blob")
        raise RuntimeError("killed")

    monkeypatch.setattr(layerrewrite, "write_estargz", broken)
    with pytest.raises(RuntimeError):
        _blob(layer, store)
    assert list(store.blobs_dir.iterdir()) == []
    assert list(store.staging_dir.iterdir()) == []


def test_a_pruned_layer_is_an_error(store: LayerStore) -> None:
    with pytest.raises(LayerBlobError, match="is gone"):
        _blob(LocalLayer("nope", store.layers_dir / "nope"), store)


def test_many_layers_at_once_each_compressed_once(
    store: LayerStore, compressions: list[str]
) -> None:
    layers = [_make_layer(store, f"layer{n}", seed=bytes([n])) for n in range(3)]
    done: list[str] = []

    async def main() -> dict[str, LayerBlob]:
        return await local_layer_blobs(
            [*layers, layers[0], layers[2]],
            store,
            OPTIONS,
            source_date_epoch=None,
            concurrency=2,
            on_done=lambda layer, blob: done.append(layer.id),
        )

    blobs = trio.run(main)
    assert sorted(blobs) == ["layer0", "layer1", "layer2"]
    assert sorted(done) == ["layer0", "layer1", "layer2"]
    assert len(compressions) == 3
    assert len({b.descriptor.digest for b in blobs.values()}) == 3
