"""`lazybuild inspect` on registry references: platforms, and per layer its format and TOC
facts, in the human and the --json output.

The expected figures are worked out here without lazybuild's index: from each blob's
tar stream (tar members, file sizes and the chunk size it was written with) and the
TOC JSON member inside it, fetched from the registry over plain HTTP.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import math
import re
import tarfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from lazybuild.cli.main import main
from lazybuild.estargz import WriterOptions, write_estargz
from lazybuild.estargz.writer import DEFAULT_CHUNK_SIZE
from lazybuild.oci import mediatypes
from lazybuild.oci.descriptor import Descriptor
from lazybuild.oci.layout import OciLayout
from tests.support.imagebuild import Layer, copy_layout, host_architecture, write_image
from tests.support.images import read_layout_image
from tests.support.push import push_oci_layout
from tests.support.registry import Registry

pytestmark = pytest.mark.root

TOC_NAME = "stargz.index.json"
PREFETCH = ".prefetch.landmark"
NO_PREFETCH = ".no.prefetch.landmark"
SMALL_CHUNK = 64 << 10
BIG_SIZE = 3 * SMALL_CHUNK + 4321  # four chunks
PRIORITIZED = ["app/run.sh", "app/big.bin"]
ACCEPT = ", ".join([mediatypes.OCI_INDEX, mediatypes.OCI_MANIFEST])
LAYER_LINE = re.compile(
    r"^    layer (?P<number>\d+)\s+(?P<digest>\S+)\s+\S+ \S+\s+(?P<format>\S+)"
    r"(?:  entries=(?P<entries>\d+) files=(?P<files>\d+) chunks=(?P<chunks>\d+)"
    r" prioritized=(?P<prioritized>\d+) landmark=(?P<landmark>\S+))?$"
)


@dataclass(frozen=True)
class EstargzLayer(Layer):
    toc_digest: str = ""
    uncompressed_size: int = 0

    def descriptor(self) -> Descriptor:
        annotations = {
            mediatypes.TOC_DIGEST_ANNOTATION: self.toc_digest,
            mediatypes.UNCOMPRESSED_SIZE_ANNOTATION: str(self.uncompressed_size),
        }
        return Descriptor(mediatypes.OCI_LAYER_GZIP, self.digest, self.size, annotations)


def _prioritized_layer(layout: OciLayout) -> EstargzLayer:
    """An eStargz layer written by lazybuild's writer with prioritized files, a prefetch
    landmark and 64 KiB chunks."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, kind, data, link in [
            ("app", tarfile.DIRTYPE, b"", ""),
            ("app/big.bin", tarfile.REGTYPE, bytes(range(256)) * (BIG_SIZE // 256 + 1), ""),
            ("app/run.sh", tarfile.REGTYPE, b"#!/bin/sh\necho hi\n", ""),
            ("app/empty", tarfile.REGTYPE, b"", ""),
            ("app/notes.txt", tarfile.REGTYPE, b"not prioritized\n", ""),
            ("app/big-link", tarfile.LNKTYPE, b"", "app/big.bin"),
            ("app/sym", tarfile.SYMTYPE, b"", "run.sh"),
        ]:
            info = tarfile.TarInfo(name)
            info.type, info.linkname, info.mtime = kind, link, 1_700_000_000
            content = data[:BIG_SIZE]
            info.size = len(content)
            tar.addfile(info, io.BytesIO(content) if content else None)
    out = io.BytesIO()
    options = WriterOptions(chunk_size=SMALL_CHUNK, prioritized_files=PRIORITIZED)
    written = write_estargz(io.BytesIO(buffer.getvalue()), out, options)
    digest = layout.write_blob(out.getvalue())
    assert digest == written.digest
    return EstargzLayer(
        digest,
        written.diff_id,
        written.size,
        "prioritized",
        toc_digest=written.toc_digest,
        uncompressed_size=written.uncompressed_size,
    )


def _multi_platform_layout(base: Path, workdir: Path) -> tuple[Path, EstargzLayer]:
    """``base`` plus the prioritized eStargz layer, as an index of two platforms."""
    root = copy_layout(base, workdir / "multi")
    image = read_layout_image(root)
    layout = image.layout
    layers = [
        Layer(d["digest"], diff_id, d["size"])
        for d, diff_id in zip(image.layers, image.config["rootfs"]["diff_ids"], strict=True)
    ]
    top = _prioritized_layer(layout)
    amd = write_image(layout, [*layers, top], tag="host")
    # The second platform differs only in its config, enough for an index of two.
    manifest = json.loads(layout.read_blob(amd.digest))
    config = json.loads(layout.read_blob(manifest["config"]["digest"]))
    config.update(architecture="arm64", variant="v8")
    config_bytes = json.dumps(config).encode()
    manifest["config"]["digest"] = layout.write_blob(config_bytes)
    manifest["config"]["size"] = len(config_bytes)
    arm_bytes = json.dumps(manifest).encode()
    entries = [
        {
            "mediaType": mediatypes.OCI_MANIFEST,
            "digest": amd.digest,
            "size": amd.size,
            "platform": {"architecture": host_architecture(), "os": "linux"},
        },
        {
            "mediaType": mediatypes.OCI_MANIFEST,
            "digest": layout.write_blob(arm_bytes),
            "size": len(arm_bytes),
            "platform": {"architecture": "arm64", "os": "linux", "variant": "v8"},
        },
    ]
    index = json.dumps(
        {"schemaVersion": 2, "mediaType": mediatypes.OCI_INDEX, "manifests": entries}
    )
    data = index.encode()
    layout.add_ref(Descriptor(mediatypes.OCI_INDEX, layout.write_blob(data), len(data)), "multi")
    return root, top


def _get(registry: Registry, repo: str, kind: str, name: str) -> bytes:
    url = f"http://{registry.host}/v2/{repo}/{kind}/{name}"
    response = httpx.get(url, headers={"Accept": ACCEPT}, timeout=60, follow_redirects=True)
    response.raise_for_status()
    return response.content


def _expected_toc(blob: bytes, chunk_size: int) -> dict[str, Any]:
    """TOC facts from the blob's tar stream and its TOC member, without lazybuild."""
    with gzip.open(io.BytesIO(blob)) as stream:
        tar_bytes = stream.read()
    with tarfile.open(fileobj=io.BytesIO(tar_bytes), mode="r:") as tar:
        members = tar.getmembers()
        (toc_member,) = [m for m in members if m.name == TOC_NAME]
        toc_json = tar.extractfile(toc_member).read()  # type: ignore[union-attr]
    members = [m for m in members if m.name != TOC_NAME]
    names = [m.name.removeprefix("./") for m in members]
    files = [
        m
        for m, n in zip(members, names, strict=True)
        if m.isreg() and n not in (PREFETCH, NO_PREFETCH)
    ]
    landmark = "prefetch" if PREFETCH in names else "no-prefetch" if NO_PREFETCH in names else None
    prioritized = 0
    if landmark == "prefetch":
        before = members[: names.index(PREFETCH)]
        prioritized = sum(1 for m in before if m.isreg())
    toc = json.loads(toc_json)
    assert len(toc["entries"]) == len(members) + sum(
        max(0, math.ceil(m.size / chunk_size) - 1) for m in members if m.isreg()
    )
    prefetch_bytes = None
    if landmark == "prefetch":
        (entry,) = [e for e in toc["entries"] if e["name"] == PREFETCH]
        prefetch_bytes = entry["offset"]
    return {
        "digest": "sha256:" + hashlib.sha256(toc_json).hexdigest(),
        "offset": _toc_member_offset(blob),
        "entries": len(toc["entries"]),
        "files": len(files),
        "chunks": sum(math.ceil(m.size / chunk_size) for m in files),
        "prioritizedFiles": prioritized,
        "landmark": landmark,
        "prefetchBytes": prefetch_bytes,
    }


def _toc_member_offset(blob: bytes) -> int:
    """The TOC offset the footer names (``%016x`` before ``STARGZ`` in its Extra field),
    checked to be where a gzip member holding the TOC tar entry starts."""
    footer = blob[-51:]
    assert footer.endswith(b"\x01\x00\x00\xff\xff" + b"\x00" * 8)
    offset = int(footer.split(b"STARGZ")[0][-16:], 16)
    head = zlib.decompressobj(16 + zlib.MAX_WBITS).decompress(blob[offset:], 512)
    assert head[: len(TOC_NAME) + 1] == TOC_NAME.encode() + b"\0"
    return offset


def _layer_lines(text: str) -> list[dict[str, str | None]]:
    lines = [LAYER_LINE.match(line) for line in text.splitlines() if line.startswith("    layer")]
    assert all(lines), text
    return [m.groupdict() for m in lines if m is not None]


def test_inspect_reports_platforms_formats_and_toc_facts(
    tiny_image_layout: Path,
    registry: Registry,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    layout, top = _multi_platform_layout(tiny_image_layout, tmp_path)
    reference = f"{registry.host}/test/inspect:multi"
    assert main(["-q", "convert", f"oci:{layout}:multi", reference]) == 0
    capsys.readouterr()

    index_bytes = _get(registry, "test/inspect", "manifests", "multi")
    index = json.loads(index_bytes)
    index_digest = "sha256:" + hashlib.sha256(index_bytes).hexdigest()
    platforms = [entry["platform"] for entry in index["manifests"]]
    assert platforms == [
        {"architecture": host_architecture(), "os": "linux"},
        {"architecture": "arm64", "os": "linux", "variant": "v8"},
    ]
    manifests = [
        json.loads(_get(registry, "test/inspect", "manifests", e["digest"]))
        for e in index["manifests"]
    ]
    expected_toc: dict[str, dict[str, Any]] = {}
    for layer in manifests[0]["layers"]:
        blob = _get(registry, "test/inspect", "blobs", layer["digest"])
        chunk_size = SMALL_CHUNK if layer["digest"] == top.digest else DEFAULT_CHUNK_SIZE
        expected_toc[layer["digest"]] = _expected_toc(blob, chunk_size)
        assert (
            layer["annotations"][mediatypes.TOC_DIGEST_ANNOTATION]
            == (expected_toc[layer["digest"]]["digest"])
        )
    # The eStargz layer is kept byte for byte, so its facts are the writer's.
    assert manifests[0]["layers"][-1]["digest"] == top.digest
    assert expected_toc[top.digest]["prioritizedFiles"] == len(PRIORITIZED)
    assert expected_toc[top.digest]["chunks"] == 4 + 1 + 1  # big.bin, run.sh, notes.txt
    assert all(t["landmark"] == "no-prefetch" for t in list(expected_toc.values())[:-1])

    assert main(["inspect", "--json", reference]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["digest"] == index_digest
    assert report["mediaType"] == mediatypes.OCI_INDEX
    assert [m["platform"] for m in report["manifests"]] == platforms
    assert [m["digest"] for m in report["manifests"]] == [e["digest"] for e in index["manifests"]]
    for manifest, reported in zip(manifests, report["manifests"], strict=True):
        assert reported["config"]["digest"] == manifest["config"]["digest"]
        assert len(reported["layers"]) == len(manifest["layers"]) == 4
        for layer, got in zip(manifest["layers"], reported["layers"], strict=True):
            assert got["digest"] == layer["digest"]
            assert got["size"] == layer["size"]
            assert got["format"] == "estargz"
            assert got["annotations"] == layer["annotations"]
            assert got["toc"] == expected_toc[layer["digest"]], layer["digest"]

    assert main(["inspect", reference]) == 0
    text = capsys.readouterr().out
    header = text.splitlines()[:3]
    assert header[1].split() == ["digest", index_digest]
    assert header[2].split() == ["mediaType", mediatypes.OCI_INDEX]
    manifest_lines = [line.split() for line in text.splitlines() if "manifest " in line]
    assert manifest_lines == [
        ["manifest", index["manifests"][0]["digest"], "platform", f"linux/{host_architecture()}"],
        ["manifest", index["manifests"][1]["digest"], "platform", "linux/arm64/v8"],
    ]
    lines = _layer_lines(text)
    layers = [layer for manifest in manifests for layer in manifest["layers"]]
    assert len(lines) == len(layers) == 8
    for line, layer in zip(lines, layers, strict=True):
        facts = expected_toc[layer["digest"]]
        assert line["digest"] == layer["digest"].removeprefix("sha256:")[:12]
        assert line["format"] == "estargz"
        assert {k: line[k] for k in ("entries", "files", "chunks", "prioritized", "landmark")} == {
            "entries": str(facts["entries"]),
            "files": str(facts["files"]),
            "chunks": str(facts["chunks"]),
            "prioritized": str(facts["prioritizedFiles"]),
            "landmark": str(facts["landmark"]),
        }


def test_inspect_reports_plain_gzip_layers_without_toc_facts(
    tiny_image_layout: Path, registry: Registry, capsys: pytest.CaptureFixture[str]
) -> None:
    digest = push_oci_layout(tiny_image_layout, registry.host, "test/inspect", "gzip")
    source = read_layout_image(tiny_image_layout)
    reference = f"{registry.host}/test/inspect:gzip"

    assert main(["inspect", "--json", reference]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["digest"] == digest
    assert report["mediaType"] == mediatypes.OCI_MANIFEST
    (manifest,) = report["manifests"]
    assert [layer["digest"] for layer in manifest["layers"]] == [
        layer["digest"] for layer in source.layers
    ]
    for layer, original in zip(manifest["layers"], source.layers, strict=True):
        assert layer["format"] == "gzip"
        assert layer["size"] == original["size"]
        assert "toc" not in layer

    assert main(["inspect", reference]) == 0
    lines = _layer_lines(capsys.readouterr().out)
    assert [line["format"] for line in lines] == ["gzip"] * len(source.layers)
    assert all(line["entries"] is None for line in lines)
