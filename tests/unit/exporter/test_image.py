"""Config and manifest assembly: platform, rootfs, created, history consistency."""

from __future__ import annotations

import hashlib
import json
import logging
from datetime import UTC, datetime

import pytest

from lazybuild.exporter.image import (
    GENERIC_HISTORY_COMMENT,
    ExportedLayer,
    assemble_image,
    consistent_history,
    created_timestamp,
    oci_layer_descriptor,
)
from lazybuild.frontend.dockerfile.imageconfig import HistoryEntry, ImageConfigState
from lazybuild.oci import mediatypes
from lazybuild.oci.descriptor import Descriptor
from lazybuild.oci.manifest import Manifest, parse_document
from lazybuild.oci.platform import Platform

AMD64 = Platform("linux", "amd64")
NOW = datetime(2025, 3, 4, 5, 6, 7, 890000, tzinfo=UTC)


def _layer(n: int, media_type: str = mediatypes.OCI_LAYER_GZIP) -> ExportedLayer:
    digest = "sha256:" + hashlib.sha256(b"blob%d" % n).hexdigest()
    diff_id = "sha256:" + hashlib.sha256(b"tar%d" % n).hexdigest()
    return ExportedLayer(Descriptor(media_type, digest, 100 + n), diff_id)


def _state(*history: HistoryEntry) -> ImageConfigState:
    return ImageConfigState(
        env=("PATH=/usr/bin",), cmd=("sh",), user="app", history=tuple(history), author="me"
    )


BASE = HistoryEntry("/bin/sh -c #(nop) ADD file:abc in /")
BASE_CMD = HistoryEntry('/bin/sh -c #(nop)  CMD ["bash"]', empty_layer=True)
RUN = HistoryEntry("RUN make", comment="buildkit.dockerfile.v0")
ENV = HistoryEntry("ENV A=1", empty_layer=True, comment="buildkit.dockerfile.v0")


def test_config_has_platform_rootfs_created_and_frontend_fields() -> None:
    layers = [_layer(1), _layer(2)]
    image = assemble_image(
        _state(BASE, BASE_CMD, RUN, ENV).to_oci_config(),
        layers,
        base_layer_count=1,
        platform=Platform("linux", "arm", "v7"),
        source_date_epoch=None,
        now=NOW,
    )
    config = json.loads(image.config_bytes)
    assert list(config) == [
        "created", "author", "architecture", "os", "variant", "config", "rootfs", "history"
    ]  # fmt: skip
    assert config["created"] == "2025-03-04T05:06:07.890000Z"
    assert (config["architecture"], config["os"], config["variant"]) == ("arm", "linux", "v7")
    assert config["author"] == "me"
    assert config["config"] == {"User": "app", "Env": ["PATH=/usr/bin"], "Cmd": ["sh"]}
    assert config["rootfs"] == {"type": "layers", "diff_ids": [layer.diff_id for layer in layers]}
    assert [h["created_by"] for h in config["history"]] == [
        BASE.created_by, BASE_CMD.created_by, "RUN make", "ENV A=1"
    ]  # fmt: skip
    assert all(h["created"] == config["created"] for h in config["history"])
    assert config["history"][3]["empty_layer"] is True
    assert image.warnings == ()


def test_manifest_lists_config_and_layers_with_oci_media_types() -> None:
    layers = [_layer(1, mediatypes.DOCKER_LAYER_GZIP), _layer(2)]
    image = assemble_image(
        _state(BASE, RUN).to_oci_config(),
        layers,
        base_layer_count=1,
        platform=AMD64,
        source_date_epoch=0,
    )
    manifest = parse_document(image.manifest_bytes, "", "manifest")
    assert isinstance(manifest, Manifest)
    assert manifest.media_type == mediatypes.OCI_MANIFEST
    assert manifest.config == image.config_descriptor
    assert image.config_descriptor.media_type == mediatypes.OCI_CONFIG
    assert image.config_descriptor.digest == (
        "sha256:" + hashlib.sha256(image.config_bytes).hexdigest()
    )
    assert [d.media_type for d in manifest.layers] == [mediatypes.OCI_LAYER_GZIP] * 2
    assert [d.digest for d in manifest.layers] == [x.descriptor.digest for x in layers]
    assert image.manifest_descriptor.digest == (
        "sha256:" + hashlib.sha256(image.manifest_bytes).hexdigest()
    )
    assert image.image_id == image.config_descriptor.digest


def test_source_date_epoch_makes_it_reproducible() -> None:
    def build() -> bytes:
        return assemble_image(
            _state(BASE, RUN).to_oci_config(),
            [_layer(1), _layer(2)],
            base_layer_count=1,
            platform=AMD64,
            source_date_epoch=1700000000,
        ).manifest_bytes

    first = build()
    assert build() == first
    config = json.loads(
        assemble_image(
            _state(BASE, RUN).to_oci_config(),
            [_layer(1), _layer(2)],
            base_layer_count=1,
            platform=AMD64,
            source_date_epoch=1700000000,
        ).config_bytes
    )
    assert config["created"] == "2023-11-14T22:13:20Z"
    assert {h["created"] for h in config["history"]} == {"2023-11-14T22:13:20Z"}


def test_history_keeps_times_it_has() -> None:
    entries, warning = consistent_history(
        [{"created": "2020-01-01T00:00:00Z", "created_by": "base"}, {"created_by": "RUN x"}],
        layer_count=2,
        base_layer_count=1,
        created="2025-01-01T00:00:00Z",
    )
    assert warning is None
    assert [e["created"] for e in entries] == ["2020-01-01T00:00:00Z", "2025-01-01T00:00:00Z"]


def test_too_few_history_entries_keep_the_base_and_describe_the_rest(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.WARNING):
        image = assemble_image(
            _state(BASE, BASE_CMD, RUN).to_oci_config(),
            [_layer(1), _layer(2), _layer(3)],
            base_layer_count=1,
            platform=AMD64,
            source_date_epoch=None,
        )
    history = json.loads(image.config_bytes)["history"]
    assert [h["created_by"] for h in history] == [
        BASE.created_by, "lazybuild build: layer 2", "lazybuild build: layer 3"
    ]  # fmt: skip
    assert history[1]["comment"] == GENERIC_HISTORY_COMMENT
    assert len(image.warnings) == 1
    assert "lists 2 layers but the image has 3" in image.warnings[0]
    assert image.warnings[0] in caplog.text


def test_too_many_history_entries_are_replaced_too() -> None:
    entries, warning = consistent_history(
        [BASE.to_json(), BASE.to_json(), RUN.to_json(), RUN.to_json()],
        layer_count=3,
        base_layer_count=2,
        created="t",
    )
    assert warning is not None
    assert [e["created_by"] for e in entries] == [
        BASE.created_by, BASE.created_by, "lazybuild build: layer 3"
    ]  # fmt: skip


def test_history_that_does_not_even_cover_the_base_is_all_generic() -> None:
    entries, warning = consistent_history(
        [RUN.to_json()], layer_count=3, base_layer_count=2, created="t"
    )
    assert warning is not None
    assert [e["created_by"] for e in entries] == [f"lazybuild build: layer {n}" for n in (1, 2, 3)]
    non_empty = [e for e in entries if not e.get("empty_layer")]
    assert len(non_empty) == 3


def test_an_image_without_layers_has_empty_history_entries_only() -> None:
    image = assemble_image(
        _state(ENV).to_oci_config(), [], base_layer_count=0, platform=AMD64, source_date_epoch=0
    )
    config = json.loads(image.config_bytes)
    assert config["rootfs"] == {"type": "layers", "diff_ids": []}
    assert image.warnings == ()


def test_created_timestamp() -> None:
    assert created_timestamp(0) == "1970-01-01T00:00:00Z"
    assert created_timestamp(None, NOW) == "2025-03-04T05:06:07.890000Z"


def test_oci_layer_descriptor_keeps_digest_and_annotations() -> None:
    source = Descriptor(
        mediatypes.DOCKER_LAYER_GZIP,
        _layer(1).descriptor.digest,
        5,
        {"a": "b"},
        platform=AMD64,
    )
    converted = oci_layer_descriptor(source)
    assert converted.media_type == mediatypes.OCI_LAYER_GZIP
    assert (converted.digest, converted.size, converted.annotations) == (
        source.digest, 5, {"a": "b"}
    )  # fmt: skip
    assert converted.platform is None
