"""The image as an OCI image layout, as a tar stream or a directory, optionally with
Docker's ``manifest.json`` so ``docker load`` takes the same tar.

This is the archive BuildKit's oci and docker exporters write (containerd's archive
format): ``oci-layout``, ``index.json`` with one entry per name
(``io.containerd.image.name`` = the full name, ``org.opencontainers.image.ref.name`` =
its tag), ``blobs/sha256/*``, and for Docker ``manifest.json`` pointing at the config
and layer blobs (gzip layers, which eStargz layers are, are accepted by docker load).

The tar is deterministic: fixed order, owner 0, mtime SOURCE_DATE_EPOCH or 0. Blobs are
hashed while they are copied; a blob whose bytes do not match its digest fails the
write instead of producing a broken archive.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import tarfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from lazybuild.errors import DigestMismatchError, UsageError
from lazybuild.exporter.image import AssembledImage
from lazybuild.oci import mediatypes
from lazybuild.oci.descriptor import Descriptor
from lazybuild.oci.layout import LAYOUT_VERSION, OciLayout
from lazybuild.oci.manifest import Index, encode_json
from lazybuild.registry.reference import DOCKER_HUB, Reference

__all__ = ["ImageArchive", "docker_repo_tags", "write_layout_dir"]

IMAGE_NAME_ANNOTATION = "io.containerd.image.name"
_COPY_PIECE = 1 << 20


@dataclass(frozen=True)
class ImageArchive:
    """Everything the archive holds: ``blob_files`` maps each layer digest to its file."""

    image: AssembledImage
    blob_files: Mapping[str, Path]
    names: Sequence[str]
    docker_manifest: bool
    mtime: int = 0

    def index(self) -> Index:
        return Index(mediatypes.OCI_INDEX, tuple(index_entries(self.image, self.names)))

    def write_tar(self, out: BinaryIO) -> None:
        """The archive as a tar stream (``out`` need not be seekable)."""
        with tarfile.open(fileobj=out, mode="w|", format=tarfile.USTAR_FORMAT) as tar:
            self._add_dir(tar, "blobs/")
            self._add_dir(tar, "blobs/sha256/")
            for digest, data in self.small_blobs().items():
                self._add_bytes(tar, _blob_name(digest), data)
            for layer in _unique_layers(self.image):
                self._add_blob_file(tar, layer)
            self._add_bytes(tar, "oci-layout", _layout_marker())
            self._add_bytes(tar, "index.json", self.index().encode())
            if self.docker_manifest:
                self._add_bytes(tar, "manifest.json", self._docker_manifest())

    def small_blobs(self) -> dict[str, bytes]:
        return {
            self.image.config_descriptor.digest: self.image.config_bytes,
            self.image.manifest_descriptor.digest: self.image.manifest_bytes,
        }

    def _docker_manifest(self) -> bytes:
        entry = {
            "Config": _blob_name(self.image.config_descriptor.digest),
            "RepoTags": docker_repo_tags(self.names),
            "Layers": [_blob_name(layer.descriptor.digest) for layer in self.image.layers],
        }
        return json.dumps([entry], separators=(",", ":")).encode()

    def _member(self, name: str, size: int = 0) -> tarfile.TarInfo:
        member = tarfile.TarInfo(name)
        member.size = size
        member.mode = 0o644
        member.mtime = self.mtime
        return member

    def _add_dir(self, tar: tarfile.TarFile, name: str) -> None:
        member = self._member(name)
        member.type = tarfile.DIRTYPE
        member.mode = 0o755
        tar.addfile(member)

    def _add_bytes(self, tar: tarfile.TarFile, name: str, data: bytes) -> None:
        tar.addfile(self._member(name, len(data)), io.BytesIO(data))

    def _add_blob_file(self, tar: tarfile.TarFile, layer: Descriptor) -> None:
        path = self.blob_files[layer.digest]
        with path.open("rb") as blob:
            reader = _VerifyingReader(blob, layer, path)
            try:
                tar.addfile(self._member(_blob_name(layer.digest), layer.size), reader)
            except OSError:
                if reader.short:  # tarfile's "unexpected end of data": the file is short
                    reader.check()
                raise
            reader.check()


def index_entries(image: AssembledImage, names: Sequence[str]) -> list[Descriptor]:
    """One index.json entry per name (one without a name when there are none)."""
    manifest = image.manifest_descriptor
    if not names:
        return [manifest]
    entries = []
    for name in names:
        ref = Reference.parse(name)
        annotations = {IMAGE_NAME_ANNOTATION: str(ref)}
        if ref.tag is not None:
            annotations[mediatypes.REF_NAME_ANNOTATION] = ref.tag
        entries.append(manifest.with_annotations(annotations))
    return entries


def docker_repo_tags(names: Sequence[str]) -> list[str]:
    """Names as Docker shows them (``docker.io/library/x:t`` is ``x:t``); names by
    digest only have no tag to give."""
    tags = []
    for name in names:
        ref = Reference.parse(name)
        if ref.tag is None:
            continue
        repository = ref.repository
        if ref.registry == DOCKER_HUB:
            familiar = repository.removeprefix("library/")
        else:
            familiar = f"{ref.registry}/{repository}"
        tags.append(f"{familiar}:{ref.tag}")
    return tags


def write_layout_dir(archive: ImageArchive, dest: Path) -> None:
    """The archive as a layout directory; an existing layout gets the image added (its
    names replace entries with the same tag)."""
    if dest.exists() and not (dest / "oci-layout").exists() and any(dest.iterdir()):
        raise UsageError(f"{dest} exists, is not empty and is not an OCI image layout")
    layout = OciLayout.create(dest)
    for data in archive.small_blobs().values():
        layout.write_blob(data)
    for layer in _unique_layers(archive.image):
        if layout.has_blob(layer.digest):
            continue
        source = archive.blob_files[layer.digest]
        with source.open("rb") as blob, layout.temp_blob_file() as out:
            staged = Path(out.name)
            try:
                reader = _VerifyingReader(blob, layer, source)
                shutil.copyfileobj(reader, out, _COPY_PIECE)
                reader.check()
                out.flush()
                os.fsync(out.fileno())
            except BaseException:
                staged.unlink(missing_ok=True)
                raise
        layout.adopt_blob_file(staged, layer.digest)
    for entry in archive.index().manifests:
        tag = entry.annotations.get(mediatypes.REF_NAME_ANNOTATION)
        layout.add_ref(entry, tag)


def _unique_layers(image: AssembledImage) -> list[Descriptor]:
    seen: dict[str, Descriptor] = {}
    for layer in image.layers:
        seen.setdefault(layer.descriptor.digest, layer.descriptor)
    return list(seen.values())


def _blob_name(digest: str) -> str:
    algorithm, hex_digest = digest.split(":", 1)
    return f"blobs/{algorithm}/{hex_digest}"


def _layout_marker() -> bytes:
    return encode_json({"imageLayoutVersion": LAYOUT_VERSION})


class _VerifyingReader:
    """Reads a blob file, hashing it; ``check`` after the last byte."""

    def __init__(self, blob: BinaryIO, descriptor: Descriptor, path: Path) -> None:
        self._blob = blob
        self._descriptor = descriptor
        self._path = path
        self._hash = hashlib.new(descriptor.digest.split(":", 1)[0])
        self._read = 0

    def read(self, size: int = -1) -> bytes:
        data = self._blob.read(size)
        self._hash.update(data)
        self._read += len(data)
        return data

    @property
    def short(self) -> bool:
        return self._read < self._descriptor.size

    def check(self) -> None:
        algorithm = self._descriptor.digest.split(":", 1)[0]
        actual = f"{algorithm}:{self._hash.hexdigest()}"
        if self._read != self._descriptor.size or actual != self._descriptor.digest:
            raise DigestMismatchError(
                f"{self._path}: {self._read} bytes hashing to {actual}, expected "
                f"{self._descriptor.size} bytes of {self._descriptor.digest}"
            )
