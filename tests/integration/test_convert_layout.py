"""`lazybuild convert` between OCI layouts, on a real Debian root filesystem.

Every converted layer must hold exactly what its original held (read back through
lazybuild's reader, every chunk verified), carry the eStargz annotations, have a DiffID
that matches its content, pass the reference Go reader, and come out the same bytes
when converted again.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import shutil
from pathlib import Path

import pytest

from lazybuild.cli.main import main
from lazybuild.oci import mediatypes
from lazybuild.oci.descriptor import Descriptor
from lazybuild.oci.layout import OciLayout
from tests.support.imagebuild import Layer, copy_layout, write_image
from tests.support.images import BIG_FILE_SIZE, read_layout_image
from tests.support.trees import layer_tree

pytestmark = pytest.mark.root


def _convert(source: str, destination: str, capsys: pytest.CaptureFixture[str]) -> str:
    assert main(["-q", "convert", source, destination]) == 0
    return capsys.readouterr().out.strip()


def test_converted_layers_hold_what_the_originals_held(
    rich_image_layout: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    digest = _convert(f"oci:{rich_image_layout}", f"oci:{tmp_path / 'out'}:esgz", capsys)
    source = read_layout_image(rich_image_layout)
    result = read_layout_image(tmp_path / "out", "esgz")
    assert result.manifest_digest == digest
    assert result.manifest["mediaType"] == mediatypes.OCI_MANIFEST
    assert result.manifest["config"]["mediaType"] == mediatypes.OCI_CONFIG
    assert len(result.layers) == len(source.layers) == 4

    for number, (before, after) in enumerate(zip(source.layers, result.layers, strict=True)):
        original = layer_tree(source.blob(before["digest"]))
        converted = layer_tree(result.blob(after["digest"]))
        assert converted.entries == original.entries, f"layer {number + 1} differs"
        assert converted.hardlinks == original.hardlinks
        assert after["mediaType"] == mediatypes.OCI_LAYER_GZIP
        annotations = after["annotations"]
        uncompressed = gzip.decompress(result.blob(after["digest"]).read_bytes())
        assert annotations[mediatypes.UNCOMPRESSED_SIZE_ANNOTATION] == str(len(uncompressed))
        diff_id = "sha256:" + hashlib.sha256(uncompressed).hexdigest()
        assert result.config["rootfs"]["diff_ids"][number] == diff_id
        assert annotations[mediatypes.TOC_DIGEST_ANNOTATION].startswith("sha256:")

    assert result.config["history"] == source.config["history"]
    kept = {k: v for k, v in source.config.items() if k != "rootfs"}
    assert {k: v for k, v in result.config.items() if k != "rootfs"} == kept
    upper = layer_tree(result.blob(result.layers[-1]["digest"]))
    assert upper.entries["srv/big.bin"].size == BIG_FILE_SIZE
    assert upper.entries["srv/hello.txt"].xattrs == (("user.lazybuild.note", b"\x00binary\xff"),)
    assert upper.entries["srv/hello.txt"].mode == 0o4755
    assert upper.entries["srv/pipe"].type == "fifo"
    assert "usr/share/doc/.wh..wh..opq" in upper.entries


def test_reference_go_reader_verifies_every_layer(
    rich_image_layout: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from tests.support.gochecker import build_go_checker, run_go_checker

    checker = build_go_checker(tmp_path / "go")
    _convert(f"oci:{rich_image_layout}", f"oci:{tmp_path / 'out'}", capsys)
    result = read_layout_image(tmp_path / "out")
    for layer in result.layers:
        toc_digest = layer["annotations"][mediatypes.TOC_DIGEST_ANNOTATION]
        report = run_go_checker(checker, result.blob(layer["digest"]), toc_digest)
        tree = layer_tree(result.blob(layer["digest"]))
        regular = {p: f for p, f in tree.entries.items() if f.type == "reg"}
        hashes = {
            p.removeprefix("./"): h.removeprefix("sha256:")
            for p, h in report["file_sha256"].items()
        }
        for path, facts in regular.items():
            assert hashes[path] == facts.sha256, path


def test_conversion_is_deterministic_and_idempotent(
    rich_image_layout: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    first = _convert(f"oci:{rich_image_layout}", f"oci:{tmp_path / 'a'}", capsys)
    second = _convert(f"oci:{rich_image_layout}", f"oci:{tmp_path / 'b'}", capsys)
    assert first == second
    # Converting an eStargz image keeps every layer as it is: the same image comes out.
    again = _convert(f"oci:{tmp_path / 'a'}", f"oci:{tmp_path / 'c'}", capsys)
    assert again == first
    shutil.rmtree(tmp_path / "b")


def test_index_is_converted_per_platform(
    rich_image_layout: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = read_layout_image(rich_image_layout)
    layout = OciLayout.open(rich_image_layout)
    platform = {"architecture": source.config["architecture"], "os": "linux"}
    index = {
        "schemaVersion": 2,
        "mediaType": mediatypes.OCI_INDEX,
        "manifests": [
            {
                "mediaType": mediatypes.OCI_MANIFEST,
                "digest": source.manifest_digest,
                "size": layout.blob_path(source.manifest_digest).stat().st_size,
                "platform": platform,
            }
        ],
    }
    multi = copy_layout(rich_image_layout, tmp_path / "multi")
    multi_layout = OciLayout.open(multi)
    data = json.dumps(index).encode()
    multi_layout.add_ref(
        Descriptor(mediatypes.OCI_INDEX, multi_layout.write_blob(data), len(data)), "multi"
    )
    _convert(f"oci:{multi}:multi", f"oci:{tmp_path / 'out'}:multi", capsys)
    out = OciLayout.open(tmp_path / "out")
    root = out.resolve("multi")
    assert root.media_type == mediatypes.OCI_INDEX
    converted_index = json.loads(out.read_blob(root.digest))
    (entry,) = converted_index["manifests"]
    assert entry["platform"] == platform
    manifest = json.loads(out.read_blob(entry["digest"]))
    assert all(
        mediatypes.TOC_DIGEST_ANNOTATION in layer["annotations"] for layer in manifest["layers"]
    )


def test_repeated_layer_is_converted_once(
    tiny_image_layout: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = read_layout_image(tiny_image_layout)
    layout = copy_layout(tiny_image_layout, tmp_path / "repeated")
    layers = [
        Layer(d["digest"], diff_id, d["size"])
        for d, diff_id in zip(source.layers, source.config["rootfs"]["diff_ids"], strict=True)
    ]
    write_image(OciLayout.open(layout), [*layers, layers[-1]], tag="latest")
    assert main(["convert", f"oci:{layout}", f"oci:{tmp_path / 'out'}"]) == 0
    captured = capsys.readouterr()
    assert captured.err.count("-> eStargz") == len(layers)
    result = read_layout_image(tmp_path / "out")
    assert result.layers[-1] == result.layers[-2]
    diff_ids = result.config["rootfs"]["diff_ids"]
    assert diff_ids[-1] == diff_ids[-2]


def test_chunk_size_and_level_options(
    tiny_image_layout: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out_default = tmp_path / "default"
    out_small = tmp_path / "small"
    _convert(f"oci:{tiny_image_layout}", f"oci:{out_default}", capsys)
    options = ["--chunk-size", "64KiB", "--compression-level", "1"]
    assert main(["-q", "convert", *options, f"oci:{tiny_image_layout}", f"oci:{out_small}"]) == 0
    capsys.readouterr()

    def chunk_counts(root: Path) -> list[int]:
        assert main(["inspect", "--json", f"oci:{root}"]) == 0
        report = json.loads(capsys.readouterr().out)
        return [layer["toc"]["chunks"] for layer in report["manifests"][0]["layers"]]

    assert sum(chunk_counts(out_small)) > sum(chunk_counts(out_default))
