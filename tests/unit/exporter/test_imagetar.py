"""The OCI layout / docker archive: what it holds, readable by our own layout reader."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import pytest
import trio

from lazybuild.errors import DigestMismatchError, UsageError
from lazybuild.exporter.imagetar import ImageArchive, docker_repo_tags, write_layout_dir
from lazybuild.image.store import LayoutSource, RootDocument
from lazybuild.oci import mediatypes
from lazybuild.oci.layout import OciLayout
from tests.unit.exporter.helpers import SmallImage, small_image


def _archive(tmp_path: Path, names: list[str], *, docker: bool) -> tuple[SmallImage, ImageArchive]:
    image = small_image(tmp_path)
    files = {}
    for digest, data in image.blobs.items():
        path = tmp_path / digest.split(":")[1]
        path.write_bytes(data)
        files[digest] = path
    return image, ImageArchive(image.image, files, names, docker, mtime=1234)


def _tar_bytes(archive: ImageArchive) -> bytes:
    out = io.BytesIO()
    archive.write_tar(out)
    return out.getvalue()


def test_oci_tar_is_a_layout_our_reader_opens(tmp_path: Path) -> None:
    image, archive = _archive(tmp_path, ["r.example/app:v1"], docker=False)
    data = _tar_bytes(archive)
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        members = tar.getmembers()
        assert "manifest.json" not in tar.getnames()
        assert {m.mtime for m in members} == {1234}
        assert {(m.uid, m.gid) for m in members} == {(0, 0)}
        tar.extractall(tmp_path / "x", filter="tar")
    layout = OciLayout.open(tmp_path / "x")
    entry = layout.resolve("v1")
    assert entry.digest == image.image.manifest_descriptor.digest
    assert entry.annotations["io.containerd.image.name"] == "r.example/app:v1"
    for digest, blob in image.blobs.items():
        assert layout.read_blob(digest) == blob
    assert layout.read_blob(image.image.config_descriptor.digest) == image.image.config_bytes
    assert _tar_bytes(archive) == data  # deterministic


def test_docker_tar_has_a_manifest_json_for_docker_load(tmp_path: Path) -> None:
    image, archive = _archive(
        tmp_path, ["r.example/app:v1", "docker.io/library/app:2"], docker=True
    )
    with tarfile.open(fileobj=io.BytesIO(_tar_bytes(archive))) as tar:
        manifest_file = tar.extractfile("manifest.json")
        assert manifest_file is not None
        (entry,) = json.loads(manifest_file.read())
        names = set(tar.getnames())
    assert entry["RepoTags"] == ["r.example/app:v1", "app:2"]
    assert entry["Config"] == "blobs/sha256/" + image.image.config_descriptor.digest[7:]
    assert entry["Layers"] == [
        "blobs/sha256/" + layer.descriptor.digest[7:] for layer in image.image.layers
    ]
    assert set(entry["Layers"]) | {entry["Config"], "index.json", "oci-layout"} <= names


def test_repo_tags_are_docker_familiar_names() -> None:
    assert docker_repo_tags(
        ["busybox", "docker.io/me/x:1", "localhost:5000/a/b:t", "r.io/x@sha256:" + "b" * 64]
    ) == ["busybox:latest", "me/x:1", "localhost:5000/a/b:t"]


def test_layout_dir_adds_to_an_existing_layout(tmp_path: Path) -> None:
    image, archive = _archive(tmp_path, ["app:one"], docker=False)
    dest = tmp_path / "layout"
    write_layout_dir(archive, dest)
    _, again = _archive(tmp_path, ["app:two"], docker=False)
    write_layout_dir(again, dest)
    index = OciLayout.open(dest).index()
    tags = [m.annotations[mediatypes.REF_NAME_ANNOTATION] for m in index.manifests]
    assert tags == ["one", "two"]

    async def root() -> RootDocument:
        return await LayoutSource(OciLayout.open(dest), "two").root()

    assert trio.run(root).descriptor.digest == image.image.manifest_descriptor.digest


def test_layout_dir_refuses_a_directory_that_is_not_a_layout(tmp_path: Path) -> None:
    _, archive = _archive(tmp_path, [], docker=False)
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "file").write_text("x")
    with pytest.raises(UsageError, match="not an OCI image layout"):
        write_layout_dir(archive, tmp_path / "busy")


@pytest.mark.parametrize("damage", [b"X", b""])
def test_a_blob_that_does_not_match_its_digest_fails_the_write(
    tmp_path: Path, damage: bytes
) -> None:
    image, archive = _archive(tmp_path, [], docker=True)
    path = archive.blob_files[image.layers[1].descriptor.digest]
    data = path.read_bytes()
    path.write_bytes(data[:-1] + damage)  # changed last byte, or one byte short
    with pytest.raises(DigestMismatchError):
        _tar_bytes(archive)
    with pytest.raises(DigestMismatchError):
        write_layout_dir(archive, tmp_path / "layout")
    staging = tmp_path / "layout" / "blobs" / ".staging"
    assert not staging.exists() or list(staging.iterdir()) == []
