"""Blobs of a local OCI layout read like a registry's (``oci.localblob``)."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio

from lazybuild.errors import FormatError, NotFoundError
from lazybuild.oci.layout import OciLayout
from lazybuild.oci.localblob import LocalBlob, layout_of, layout_source

DIGEST = "sha256:" + "a" * 64


def test_sources_name_a_directory_and_a_manifest(tmp_path: Path) -> None:
    source = layout_source(tmp_path, DIGEST)
    assert source == f"oci-layout:{tmp_path}@{DIGEST}"
    assert layout_of(source) == tmp_path
    assert layout_of("registry.example/app@" + DIGEST) is None


@pytest.mark.parametrize(
    "source",
    ["oci-layout:relative/dir@" + DIGEST, "oci-layout:/dir", "oci-layout:/dir@sha256:short"],
)
def test_malformed_sources_are_format_errors(source: str) -> None:
    with pytest.raises(FormatError):
        layout_of(source)


def test_ranges_come_back_in_order_and_outside_ones_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "blob"
    path.write_bytes(bytes(range(256)) * 4)
    blob = LocalBlob(path, 1024)
    got: list[tuple[int, bytes]] = []

    async def main() -> None:
        await blob.stream_ranges([(10, 3), (1000, 24)], lambda i, d: got.append((i, d)))
        assert await blob.read_at(255, 2) == bytes([255, 0])
        with pytest.raises(ValueError, match="outside"):
            await blob.read_at(1020, 8)

    trio.run(main)
    assert got == [(0, bytes([10, 11, 12])), (1, (bytes(range(256)) * 4)[1000:])]


def test_a_missing_or_resized_blob_is_refused(tmp_path: Path) -> None:
    with pytest.raises(NotFoundError):
        LocalBlob(tmp_path / "missing", 10)
    (tmp_path / "short").write_bytes(b"12345")
    with pytest.raises(FormatError, match="descriptor says 10"):
        LocalBlob(tmp_path / "short", 10)


def test_a_layout_blob_of_another_length_than_its_descriptor_is_never_read(
    tmp_path: Path,
) -> None:
    """A planted oversized file under a digest's name (a local cache directory is input
    from a CI cache action) is refused by its length, before a byte is read."""
    layout = OciLayout.create(tmp_path / "layout")
    digest = layout.write_blob(b"the document")
    assert layout.read_blob(digest, len(b"the document")) == b"the document"
    layout.blob_path(digest).write_bytes(b"x" * (1 << 20))
    with pytest.raises(FormatError, match="descriptor says 12"):
        layout.read_blob(digest, 12)
