from __future__ import annotations

import hashlib
import json
from pathlib import Path

from lazybuild.oci import mediatypes
from lazybuild.oci.manifest import Manifest, load_config, parse_document
from lazybuild.oci.platform import Platform
from lazybuild.registry.client import ResolvedImage
from lazybuild.registry.reference import Reference
from lazybuild.worker.imagerecords import ImageRecords

PLATFORM = Platform.parse("linux/amd64")


def _digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _image() -> ResolvedImage:
    config_bytes = json.dumps(
        {"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers", "diff_ids": []}}
    ).encode()
    manifest_bytes = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": mediatypes.OCI_MANIFEST,
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": _digest(config_bytes),
                "size": len(config_bytes),
            },
            "layers": [],
        }
    ).encode()
    manifest = parse_document(manifest_bytes, mediatypes.OCI_MANIFEST, "test")
    assert isinstance(manifest, Manifest)
    digest = _digest(manifest_bytes)
    return ResolvedImage(
        ref=Reference.parse(f"example.com/base@{digest}"),
        index=None,
        manifest_digest=digest,
        manifest=manifest,
        manifest_bytes=manifest_bytes,
        config=load_config(config_bytes, "test"),
        config_bytes=config_bytes,
    )


def test_a_saved_resolution_comes_back_as_it_was(tmp_path: Path) -> None:
    records = ImageRecords(tmp_path)
    image = _image()
    assert records.load("example.com/base:1", PLATFORM) is None
    records.save("example.com/base:1", PLATFORM, image)
    loaded = records.load("example.com/base:1", PLATFORM)
    assert loaded is not None
    assert loaded.manifest_digest == image.manifest_digest
    assert str(loaded.ref) == str(image.ref)
    assert loaded.config == image.config
    assert records.load("example.com/base:1", Platform.parse("linux/arm64")) is None
    assert records.load("example.com/base:2", PLATFORM) is None


def test_a_tampered_record_is_ignored(tmp_path: Path) -> None:
    records = ImageRecords(tmp_path)
    records.save("example.com/base:1", PLATFORM, _image())
    (path,) = tmp_path.glob("*.json")
    record = json.loads(path.read_text())
    record["config"] = b'{"rootfs": {"diff_ids": []}, "evil": 1}'.hex()
    path.write_text(json.dumps(record))
    assert records.load("example.com/base:1", PLATFORM) is None
    path.write_text("{not json")
    assert records.load("example.com/base:1", PLATFORM) is None
