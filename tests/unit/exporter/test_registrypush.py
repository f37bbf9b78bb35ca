"""Which way each blob reaches the target repository (against a fake registry client)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, cast

import pytest
import trio

from lazybuild.exporter.content import BlobFiles
from lazybuild.exporter.registrypush import PushReport, push_image
from lazybuild.progress import transfer
from lazybuild.registry.client import RegistryClient
from tests.unit.exporter.helpers import FakeRegistry, ReportingRegistry, SmallImage, small_image

SOURCE = "r.example/base@sha256:" + "a" * 64


def _push(image: SmallImage, registry: FakeRegistry, names: list[str], tmp_path: Path) -> Any:
    lines: list[str] = []
    client = cast(RegistryClient, registry)

    async def main() -> list[PushReport]:
        blobs = BlobFiles(client, image.layers, tmp_path, lines.append)
        return await push_image(
            image.image, image.layers, names, registry=client, blobs=blobs, progress=lines.append
        )

    return trio.run(main), lines


def _with_base(tmp_path: Path, source: str = SOURCE) -> tuple[SmallImage, FakeRegistry, str]:
    image = small_image(tmp_path, source)
    registry = FakeRegistry()
    base_digest = image.layers[0].descriptor.digest
    registry.put(source.partition("@")[0], image.blobs[base_digest])
    return image, registry, base_digest


def test_same_registry_mounts_base_layers_and_uploads_local_ones(tmp_path: Path) -> None:
    image, registry, base = _with_base(tmp_path)
    (report,), _ = _push(image, registry, ["r.example/app:1"], tmp_path)
    assert report.mounted == [base]
    assert report.uploaded == [image.layers[1].descriptor.digest]
    assert report.manifest_digest == image.image.manifest_descriptor.digest
    assert ("download", "r.example/base", base) not in registry.calls
    assert registry.manifests["r.example/app:1"] == image.image.manifest_bytes
    assert ("r.example/app", image.image.config_descriptor.digest) in registry.blobs


def test_blobs_already_there_are_not_moved(tmp_path: Path) -> None:
    image, registry, _ = _with_base(tmp_path)
    _push(image, registry, ["r.example/app:1"], tmp_path)
    registry.calls.clear()
    (report,), _ = _push(image, registry, ["r.example/app:2"], tmp_path)
    assert sorted(report.exists) == sorted(layer.descriptor.digest for layer in image.layers)
    assert [c for c in registry.calls if c[0] != "has"] == []


def test_another_registry_gets_the_base_layer_copied_through(tmp_path: Path) -> None:
    image, registry, base = _with_base(tmp_path)
    (report,), lines = _push(image, registry, ["other.example/app:1"], tmp_path)
    assert report.copied == [base]
    assert ("download", "r.example/base", base) in registry.calls
    assert any("is on r.example, not other.example: copying it through" in line for line in lines)


def test_a_refused_mount_falls_back_to_copying_and_says_so(tmp_path: Path) -> None:
    image, registry, base = _with_base(tmp_path)
    registry.mountable = False
    (report,), lines = _push(image, registry, ["r.example/app:1"], tmp_path)
    assert report.copied == [base]
    assert any("refused to mount" in line for line in lines)


def test_later_names_mount_local_layers_from_earlier_ones(tmp_path: Path) -> None:
    image, registry, base = _with_base(tmp_path)
    first, second = _push(image, registry, ["r.example/a:1", "r.example/b:1"], tmp_path)[0]
    local = image.layers[1].descriptor.digest
    assert first.uploaded == [local]
    assert set(second.mounted) == {base, local}
    assert [c for c in registry.calls if c[0] == "upload" and c[2] == local] == [
        ("upload", "r.example/a", local)
    ]


def test_long_uploads_are_said_in_the_build_display_lines(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(transfer, "SHOW_AFTER", 0.0)  # every upload counts as long
    image = small_image(tmp_path, SOURCE)
    registry = ReportingRegistry()
    registry.put("r.example/base", image.blobs[image.layers[0].descriptor.digest])
    _, lines = _push(image, registry, ["r.example/app:1"], tmp_path)
    local = image.layers[1].descriptor
    label = transfer.blob_label(local.digest)
    assert any(line.startswith(f"{label} pushed ") for line in lines)
    assert transfer.active() is None


def test_a_board_the_command_installed_is_kept(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(transfer, "SHOW_AFTER", 0.0)
    image = small_image(tmp_path, SOURCE)
    registry = ReportingRegistry()
    registry.put("r.example/base", image.blobs[image.layers[0].descriptor.digest])
    said: list[str] = []
    with transfer.reporting(transfer.LineReport(said.append)):
        _, lines = _push(image, registry, ["r.example/app:1"], tmp_path)
    assert not any(" pushed " in line for line in lines)
    assert any(" pushed " in line for line in said)
