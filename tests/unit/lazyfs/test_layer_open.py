"""LazyLayer.open: TOC verification before use, the stored TOC, refusal without annotation."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import trio

from lazybuild.cache.chunkcache import ChunkCache
from lazybuild.errors import DigestMismatchError, FormatError
from lazybuild.estargz.footer import FOOTER_SIZE
from lazybuild.lazyfs.layer import LazyLayer
from lazybuild.oci import mediatypes
from tests.unit.estargz.esgz_helpers import Member, pseudo_random
from tests.unit.lazyfs.test_layer_fakes import MemoryBlob, build_layer, open_layer


def test_toc_digest_mismatch_is_refused(tmp_path: Path) -> None:
    built = build_layer()
    wrong = "sha256:" + "0" * 64
    descriptor = built.descriptor.with_annotations({mediatypes.TOC_DIGEST_ANNOTATION: wrong})

    async def main() -> None:
        with pytest.raises(DigestMismatchError, match=built.descriptor.digest):
            await LazyLayer.open(
                MemoryBlob(built.blob).as_remote(),
                descriptor,
                ChunkCache(tmp_path / "cache"),
                state_dir=tmp_path / "state",
            )
        assert not list((tmp_path / "state").rglob("*.json"))

    trio.run(main)


def test_missing_annotation_is_a_format_error(tmp_path: Path) -> None:
    built = build_layer(annotate=False)
    blob = MemoryBlob(built.blob)

    async def main() -> None:
        with pytest.raises(FormatError, match=r"toc\.digest"):
            await open_layer(built, blob, tmp_path)
        assert blob.requests == 0

    trio.run(main)


def test_second_open_costs_nothing_on_the_network(tmp_path: Path) -> None:
    built = build_layer()

    async def main() -> None:
        first_blob = MemoryBlob(built.blob)
        first = await open_layer(built, first_blob, tmp_path)
        assert first_blob.requests == 1  # footer and TOC in one tail read
        assert first.stats.bytes_fetched == first_blob.bytes_sent
        blob = MemoryBlob(built.blob)
        second = await open_layer(built, blob, tmp_path)
        # The verified TOC and the blob's TOC offset are both kept in the state dir.
        assert blob.requests == 0
        assert [n.name for n in second.index.walk()] == [n.name for n in first.index.walk()]
        for offsets in (tmp_path / "state" / "tocs" / "offsets").iterdir():
            offsets.unlink()
        third_blob = MemoryBlob(built.blob)
        await open_layer(built, third_blob, tmp_path)
        assert third_blob.requests == 1  # without the offset: only the footer
        assert third_blob.bytes_sent == FOOTER_SIZE

    trio.run(main)


def test_damaged_stored_toc_is_fetched_again(tmp_path: Path) -> None:
    built = build_layer()

    async def main() -> None:
        await open_layer(built, MemoryBlob(built.blob), tmp_path)
        (stored,) = (tmp_path / "state").rglob("*.json")
        stored.write_bytes(b"{}")
        blob = MemoryBlob(built.blob)
        layer = await open_layer(built, blob, tmp_path)
        assert blob.bytes_sent > FOOTER_SIZE
        assert layer.index.lookup("small.txt") is not None

    trio.run(main)


def test_toc_larger_than_the_tail_read(tmp_path: Path) -> None:
    # A large incompressible xattr makes the compressed TOC bigger than the first tail read.
    noise = pseudo_random(400_000, 9).hex()
    built = build_layer(
        {"x": b"data"}, extra_members=[Member("big-xattr", xattrs={"user.n": noise})]
    )
    blob = MemoryBlob(built.blob)

    async def main() -> None:
        layer = await open_layer(built, blob, tmp_path)
        assert blob.requests == 2
        node = layer.index.lookup("x")
        assert node is not None
        assert await layer.read(node, 0, 10) == b"data"

    trio.run(main)


def test_blob_shorter_than_a_footer(tmp_path: Path) -> None:
    built = build_layer()
    blob = MemoryBlob(b"\x1f\x8b" * 10)
    built = replace(built, descriptor=replace(built.descriptor, size=20))

    async def main() -> None:
        with pytest.raises(FormatError):
            await open_layer(built, blob, tmp_path)

    trio.run(main)
