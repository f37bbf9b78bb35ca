"""lazybuild's layout hints: written with the layer, read back, and only ever hints."""

from __future__ import annotations

import pytest
import trio

from lazybuild.estargz import FOOTER_SIZE, parse_footer
from lazybuild.estargz.hints import prefetch_region_hint, toc_offset_hint
from lazybuild.estargz.reader import MAX_HINTED_TAIL_BYTES, parse_layer, read_toc_region
from lazybuild.image.layerrewrite import estargz_layer_descriptor
from lazybuild.oci import mediatypes
from lazybuild.oci.descriptor import Descriptor
from tests.unit.estargz.esgz_helpers import (
    SMALL_CHUNK,
    Member,
    make_tar,
    open_blob,
    pseudo_random,
    write,
)

TAR = make_tar(
    [
        Member("bin/", b"5"),
        Member("bin/tool", data=pseudo_random(3 * SMALL_CHUNK + 9, 1)),
        Member("etc/conf", data=b"x = 1\n"),
        Member("share/data", data=pseudo_random(2 * SMALL_CHUNK, 2)),
    ]
)


def test_the_writer_reports_where_the_toc_and_the_prefetch_region_end() -> None:
    blob, written = write(TAR, prioritized_files=["etc/conf", "bin/tool"])
    assert written.toc_offset == parse_footer(blob[-FOOTER_SIZE:]).toc_offset
    landmark = open_blob(blob, written.toc_digest).index.prefetch_landmark_offset
    assert landmark is not None and written.prefetch_region_size == landmark
    descriptor = estargz_layer_descriptor(written)
    assert toc_offset_hint(descriptor) == written.toc_offset
    assert prefetch_region_hint(descriptor) == landmark
    assert list(descriptor.annotations) == sorted(descriptor.annotations)


def test_a_layer_without_prioritized_files_has_no_region_hint() -> None:
    _, written = write(TAR)
    assert written.prefetch_region_size == 0
    descriptor = estargz_layer_descriptor(written)
    assert mediatypes.PREFETCH_REGION_ANNOTATION not in descriptor.annotations
    assert prefetch_region_hint(descriptor) is None
    assert toc_offset_hint(descriptor) == written.toc_offset


@pytest.mark.parametrize("value", ["", "-5", "12a", "1e3", "٣", "0", "999999999"])
def test_implausible_hints_are_ignored(value: str) -> None:
    descriptor = Descriptor(
        mediatypes.OCI_LAYER_GZIP,
        "sha256:" + "a" * 64,
        4096,
        {mediatypes.TOC_OFFSET_ANNOTATION: value, mediatypes.PREFETCH_REGION_ANNOTATION: value},
    )
    assert toc_offset_hint(descriptor) is None
    assert prefetch_region_hint(descriptor) is None


def _reads(blob: bytes, hint: int | None) -> tuple[list[tuple[int, int]], int]:
    reads: list[tuple[int, int]] = []

    async def read_at(offset: int, length: int) -> bytes:
        reads.append((offset, length))
        return blob[offset : offset + length]

    async def main() -> tuple[bytes, int]:
        return await read_toc_region(read_at, len(blob), toc_offset_hint=hint)

    tail, start = trio.run(main)
    return reads, parse_layer(tail, start, len(blob), None).index.stats.entries


def test_a_right_toc_offset_hint_reads_exactly_the_toc_and_footer() -> None:
    blob, written = write(TAR)
    reads, entries = _reads(blob, written.toc_offset)
    assert reads == [(written.toc_offset, len(blob) - written.toc_offset)]
    assert entries == _reads(blob, None)[1]


@pytest.mark.parametrize("shift", [1, -1])
def test_a_wrong_toc_offset_hint_still_finds_the_toc(shift: int) -> None:
    blob, written = write(TAR)
    reads, entries = _reads(blob, written.toc_offset + shift)
    # Too late: one more read from where the footer says; too early: one read.
    assert len(reads) == (2 if shift > 0 else 1)
    assert entries == _reads(blob, None)[1]


def test_a_hint_too_far_from_the_end_is_not_followed() -> None:
    blob, _ = write(TAR)
    padded = bytes(MAX_HINTED_TAIL_BYTES) + blob  # not a real layer: only the reads count
    reads: list[tuple[int, int]] = []

    async def read_at(offset: int, length: int) -> bytes:
        reads.append((offset, length))
        return padded[offset : offset + length]

    trio.run(lambda: read_toc_region(read_at, len(padded), toc_offset_hint=1))
    assert reads[0][0] > 1
