"""OCI image layout directories (``oci:DIR[:tag]``): blobs by digest plus an index.json.

Blobs are written to a temporary name and renamed into place, so a crash never
leaves a file under ``blobs/`` whose content does not match its name.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import IO, BinaryIO

from lazybuild.errors import FormatError, NotFoundError
from lazybuild.oci import mediatypes
from lazybuild.oci.descriptor import Descriptor
from lazybuild.oci.digest import validate_digest, verify_digest
from lazybuild.oci.manifest import Index, encode_json, parse_document
from lazybuild.state.atomicfile import write_atomic

LAYOUT_VERSION = "1.0.0"


class OciLayout:
    def __init__(self, root: Path) -> None:
        self.root = root

    @classmethod
    def open(cls, root: Path) -> OciLayout:
        marker = root / "oci-layout"
        if not marker.is_file():
            raise NotFoundError(f"{root} is not an OCI image layout (no oci-layout file)")
        try:
            version = json.loads(marker.read_text()).get("imageLayoutVersion")
        except (OSError, ValueError) as exc:
            raise FormatError(f"{marker}: unreadable: {exc}") from None
        if version != LAYOUT_VERSION:
            raise FormatError(f"{marker}: unsupported imageLayoutVersion {version!r}")
        return cls(root)

    @classmethod
    def create(cls, root: Path) -> OciLayout:
        """Open the layout at ``root``, making an empty one first if there is none."""
        if (root / "oci-layout").exists():
            return cls.open(root)
        (root / "blobs" / "sha256").mkdir(parents=True, exist_ok=True)
        layout = cls(root)
        layout._write_atomic(root / "oci-layout", encode_json({"imageLayoutVersion": "1.0.0"}))
        if not (root / "index.json").exists():
            layout._write_index(Index(media_type=mediatypes.OCI_INDEX, manifests=()))
        return layout

    def blob_path(self, digest: str) -> Path:
        algorithm, hex_digest = validate_digest(digest).split(":", 1)
        return self.root / "blobs" / algorithm / hex_digest

    def has_blob(self, digest: str) -> bool:
        return self.blob_path(digest).is_file()

    def write_blob(self, data: bytes) -> str:
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        path = self.blob_path(digest)
        if not path.exists():
            self._write_atomic(path, data)
        return digest

    def adopt_blob_file(self, source: Path, digest: str) -> None:
        """Move a file whose digest the caller computed while writing it into the layout."""
        path = self.blob_path(digest)
        path.parent.mkdir(parents=True, exist_ok=True)
        os.replace(source, path)

    def temp_blob_file(self) -> IO[bytes]:
        """A temporary file on the layout's filesystem, for streaming a blob before adopting it."""
        staging = self.root / "blobs" / ".staging"
        staging.mkdir(parents=True, exist_ok=True)
        return tempfile.NamedTemporaryFile(dir=staging, delete=False)

    def read_blob(self, digest: str, size: int | None = None) -> bytes:
        """The blob, verified; with ``size`` (its descriptor's), a file of another
        length is refused before it is read, so a planted file cannot take memory."""
        path = self.blob_path(digest)
        try:
            if size is not None and path.stat().st_size != size:
                raise FormatError(
                    f"{self.root}: blob {digest} is {path.stat().st_size} bytes, "
                    f"its descriptor says {size}"
                )
            data = path.read_bytes()
        except FileNotFoundError:
            raise NotFoundError(f"{self.root}: blob {digest} is missing") from None
        return verify_digest(data, digest, f"{self.root}: blob {digest}")

    def open_blob(self, digest: str) -> BinaryIO:
        """The blob file for streaming; the caller verifies the digest while reading it."""
        try:
            return self.blob_path(digest).open("rb")
        except FileNotFoundError:
            raise NotFoundError(f"{self.root}: blob {digest} is missing") from None

    def index(self) -> Index:
        path = self.root / "index.json"
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise FormatError(f"{self.root} has no index.json") from None
        parsed = parse_document(data, mediatypes.OCI_INDEX, str(path))
        if not isinstance(parsed, Index):
            raise FormatError(f"{path} is not an image index")
        return parsed

    def resolve(self, tag: str | None) -> Descriptor:
        """The entry of index.json named ``tag``; with no tag, the only entry (or ``latest``)."""
        entries = self.index().manifests
        if tag is None:
            if len(entries) == 1:
                return entries[0]
            tag = "latest"
        for entry in entries:
            if entry.annotations.get(mediatypes.REF_NAME_ANNOTATION) == tag:
                return entry
        names = [e.annotations.get(mediatypes.REF_NAME_ANNOTATION, "?") for e in entries]
        raise NotFoundError(f"{self.root}: no image tagged {tag!r} (has: {', '.join(names)})")

    def add_ref(self, descriptor: Descriptor, tag: str | None) -> None:
        """Record ``descriptor`` in index.json, replacing an entry with the same tag."""
        index = self.index()
        kept = [
            m
            for m in index.manifests
            if tag is None or m.annotations.get(mediatypes.REF_NAME_ANNOTATION) != tag
        ]
        entry = descriptor
        if tag is not None:
            entry = descriptor.with_annotations({mediatypes.REF_NAME_ANNOTATION: tag})
        self._write_index(Index(media_type=index.media_type, manifests=(*kept, entry)))

    def _write_index(self, index: Index) -> None:
        self._write_atomic(self.root / "index.json", index.encode())

    @staticmethod
    def _write_atomic(path: Path, data: bytes) -> None:
        write_atomic(path, data)
