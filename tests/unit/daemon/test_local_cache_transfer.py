"""A local build cache through a builder: the client sends what an import reads of the
layout (not the blobs of earlier exports it keeps), and merges an exported layout into
its directory as a local export writes it."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from pathlib import Path

import pytest

from lazybuild.daemon.buildclient import RemoteBuildError, _merge_cache, write_cache_tar
from lazybuild.oci import mediatypes
from lazybuild.oci.descriptor import Descriptor
from lazybuild.oci.layout import OciLayout
from lazybuild.remotecache.document import CACHE_ARTIFACT_TYPE, CACHE_CONFIG_MEDIA_TYPE
from lazybuild.remotecache.registrycache import LOCAL_CACHE_TAG


def _cache(root: Path, layer: bytes, config: bytes = b"{}") -> str:
    """A cache layout at ``root`` as a local export leaves it: its manifest's digest."""
    layout = OciLayout.create(root)
    config_digest = layout.write_blob(config)
    layer_digest = layout.write_blob(layer)
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": mediatypes.OCI_MANIFEST,
            "artifactType": CACHE_ARTIFACT_TYPE,
            "config": {
                "mediaType": CACHE_CONFIG_MEDIA_TYPE,
                "digest": config_digest,
                "size": len(config),
            },
            "layers": [
                {"mediaType": mediatypes.OCI_LAYER_GZIP, "digest": layer_digest, "size": len(layer)}
            ],
        }
    ).encode()
    digest = layout.write_blob(manifest)
    layout.add_ref(Descriptor(mediatypes.OCI_MANIFEST, digest, len(manifest)), LOCAL_CACHE_TAG)
    return digest


def _names(tar_bytes: bytes) -> set[str]:
    with tarfile.open(fileobj=io.BytesIO(tar_bytes)) as tar:
        return {m.name for m in tar.getmembers() if m.isfile()}


def _hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_the_client_sends_what_the_cache_manifest_names(tmp_path: Path) -> None:
    src = tmp_path / "cache"
    _cache(src, b"old layer")
    manifest = _cache(src, b"new layer")  # the old export's blobs stay in the directory
    out = io.BytesIO()
    assert write_cache_tar(src, out)
    assert _names(out.getvalue()) == {
        "oci-layout",
        "index.json",
        f"blobs/sha256/{manifest.removeprefix('sha256:')}",
        f"blobs/sha256/{_hex(b'{}')}",
        f"blobs/sha256/{_hex(b'new layer')}",
    }


def test_a_missing_or_broken_cache_is_left_to_the_import_to_report(tmp_path: Path) -> None:
    assert not write_cache_tar(tmp_path / "missing", io.BytesIO())
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "index.json").write_text("not json")
    out = io.BytesIO()
    assert write_cache_tar(broken, out)
    assert _names(out.getvalue()) == {"index.json"}


def _tar_of(root: Path) -> io.BytesIO:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for path in sorted(root.rglob("*")):
            tar.add(path, path.relative_to(root).as_posix(), recursive=False)
    return out


def test_an_exported_cache_is_merged_as_a_local_export_writes_it(tmp_path: Path) -> None:
    dest = tmp_path / "dest"
    _cache(dest, b"old layer")
    (dest / "index.json").write_text(
        json.dumps(
            {
                **json.loads((dest / "index.json").read_text()),
                "manifests": [
                    *json.loads((dest / "index.json").read_text())["manifests"],
                    {
                        "mediaType": mediatypes.OCI_MANIFEST,
                        "digest": "sha256:" + "0" * 64,
                        "size": 1,
                        "annotations": {mediatypes.REF_NAME_ANNOTATION: "other"},
                    },
                ],
            }
        )
    )
    exported = tmp_path / "exported"
    manifest = _cache(exported, b"new layer")
    _merge_cache(_tar_of(exported), dest)
    layout = OciLayout.open(dest)
    assert layout.resolve(LOCAL_CACHE_TAG).digest == manifest
    assert layout.resolve("other").digest == "sha256:" + "0" * 64  # other entries stay
    assert layout.has_blob(f"sha256:{_hex(b'old layer')}")  # so do earlier blobs
    assert layout.read_blob(f"sha256:{_hex(b'new layer')}") == b"new layer"
    assert list((dest / "blobs" / ".staging").iterdir()) == []


def test_a_blob_that_does_not_match_its_digest_is_refused(tmp_path: Path) -> None:
    exported = tmp_path / "exported"
    _cache(exported, b"new layer")
    (exported / "blobs" / "sha256" / _hex(b"new layer")).write_bytes(b"tampered")
    dest = tmp_path / "dest"
    with pytest.raises(RemoteBuildError, match="does not match its digest"):
        _merge_cache(_tar_of(exported), dest)
    assert not (dest / "blobs" / "sha256" / _hex(b"new layer")).exists()
    assert OciLayout.open(dest).index().manifests == ()


def test_the_client_names_the_cache_as_the_import_does() -> None:
    from lazybuild.daemon import buildclient
    from lazybuild.remotecache import registrycache

    assert buildclient.LOCAL_CACHE_TAG == registrycache.LOCAL_CACHE_TAG
    assert buildclient.MAX_MANIFEST_SIZE == registrycache.MAX_MANIFEST_SIZE
