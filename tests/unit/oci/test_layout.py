"""OCI layout directories: blobs by digest, tags in index.json, corruption detected."""

from __future__ import annotations

from pathlib import Path

import pytest

from lazybuild.errors import DigestMismatchError, NotFoundError
from lazybuild.oci import mediatypes
from lazybuild.oci.descriptor import Descriptor
from lazybuild.oci.layout import OciLayout


def test_blobs_and_tags(tmp_path: Path) -> None:
    layout = OciLayout.create(tmp_path / "img")
    digest = layout.write_blob(b"hello")
    assert layout.read_blob(digest) == b"hello"
    first = Descriptor(mediatypes.OCI_MANIFEST, digest, 5)
    layout.add_ref(first, "v1")
    layout.add_ref(first, "v2")
    again = OciLayout.open(tmp_path / "img")
    assert again.resolve("v1").digest == digest
    assert again.resolve("v2").annotations[mediatypes.REF_NAME_ANNOTATION] == "v2"
    with pytest.raises(NotFoundError, match="no image tagged 'v3'"):
        again.resolve("v3")


def test_corrupt_blob_is_refused(tmp_path: Path) -> None:
    layout = OciLayout.create(tmp_path)
    digest = layout.write_blob(b"good")
    layout.blob_path(digest).write_bytes(b"evil")
    with pytest.raises(DigestMismatchError):
        layout.read_blob(digest)


def test_open_requires_layout(tmp_path: Path) -> None:
    with pytest.raises(NotFoundError, match="not an OCI image layout"):
        OciLayout.open(tmp_path)
