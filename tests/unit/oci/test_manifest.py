"""Manifest, index, descriptor and platform models: parsing, serialising, selection."""

from __future__ import annotations

import json

import pytest

from lazybuild.errors import FormatError, NotFoundError, UsageError
from lazybuild.oci import mediatypes
from lazybuild.oci.descriptor import Descriptor
from lazybuild.oci.manifest import Index, Manifest, load_config, parse_document
from lazybuild.oci.platform import Platform

DIGEST_A = "sha256:" + "a" * 64
DIGEST_B = "sha256:" + "b" * 64


def _manifest_doc(**extra: object) -> dict[str, object]:
    return {
        "schemaVersion": 2,
        "mediaType": mediatypes.DOCKER_MANIFEST,
        "config": {"mediaType": mediatypes.DOCKER_CONFIG, "digest": DIGEST_A, "size": 10},
        "layers": [
            {
                "mediaType": mediatypes.DOCKER_LAYER_GZIP,
                "digest": DIGEST_B,
                "size": 20,
                "annotations": {"k": "v"},
            }
        ],
        **extra,
    }


def test_manifest_round_trip_keeps_unknown_fields() -> None:
    doc = _manifest_doc(subject={"x": 1})
    parsed = parse_document(json.dumps(doc).encode(), "", "test")
    assert isinstance(parsed, Manifest)
    assert parsed.layers[0].annotations == {"k": "v"}
    assert parsed.config.size == 10
    assert json.loads(parsed.encode()) == doc


def test_media_type_from_transport_when_body_has_none() -> None:
    doc = _manifest_doc()
    del doc["mediaType"]
    parsed = parse_document(json.dumps(doc).encode(), mediatypes.OCI_MANIFEST, "test")
    assert isinstance(parsed, Manifest)
    assert parsed.media_type == mediatypes.OCI_MANIFEST


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"not json", "not valid JSON"),
        (b"[]", "not a JSON object"),
        (json.dumps({"schemaVersion": 1}).encode(), "schemaVersion 1"),
        (
            json.dumps({"schemaVersion": 2, "mediaType": "application/x-weird"}).encode(),
            "unsupported media type 'application/x-weird'",
        ),
        (
            json.dumps(
                _manifest_doc(layers=[{"mediaType": "x", "digest": "sha256:zz", "size": 1}])
            ).encode(),
            "malformed digest",
        ),
    ],
)
def test_bad_documents_name_the_problem(body: bytes, message: str) -> None:
    with pytest.raises(FormatError, match=message):
        parse_document(body, "", "test")


def test_index_selects_host_platform_and_skips_attestations() -> None:
    def entry(digest: str, os: str, arch: str, variant: str = "") -> dict[str, object]:
        platform = {"os": os, "architecture": arch} | ({"variant": variant} if variant else {})
        return {
            "mediaType": mediatypes.OCI_MANIFEST,
            "digest": digest,
            "size": 1,
            "platform": platform,
        }

    doc = {
        "schemaVersion": 2,
        "mediaType": mediatypes.OCI_INDEX,
        "manifests": [
            entry("sha256:" + "1" * 64, "unknown", "unknown"),
            entry("sha256:" + "2" * 64, "linux", "arm", "v6"),
            entry("sha256:" + "3" * 64, "linux", "arm", "v7"),
            entry("sha256:" + "4" * 64, "linux", "amd64"),
        ],
    }
    index = parse_document(json.dumps(doc).encode(), "", "test")
    assert isinstance(index, Index)
    assert index.select(Platform("linux", "amd64"), "t").digest.startswith("sha256:4")
    assert index.select(Platform("linux", "arm", "v7"), "t").digest.startswith("sha256:3")
    with pytest.raises(NotFoundError, match="no image for linux/s390x"):
        index.select(Platform("linux", "s390x"), "t")


def test_platform_parse() -> None:
    assert Platform.parse("linux/arm64/v8") == Platform("linux", "arm64", "v8")
    with pytest.raises(UsageError):
        Platform.parse("linux")


def test_descriptor_requires_fields() -> None:
    with pytest.raises(FormatError, match="lacks 'size'"):
        Descriptor.from_json({"mediaType": "x", "digest": DIGEST_A}, "layer 1")


def test_config_needs_diff_ids() -> None:
    with pytest.raises(FormatError, match=r"rootfs\.diff_ids"):
        load_config(b'{"rootfs": {}}', "config")
