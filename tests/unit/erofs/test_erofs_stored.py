"""A layout restored from its kept parts is the layout ``build_layout`` makes, and parts
that do not fit the index or the TOC digest are refused."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import pytest

from lazybuild.erofs import (
    BLOCK_SIZE,
    ErofsLayout,
    LayoutParts,
    StoredLayoutError,
    build_layout,
    layout_parts,
    restore_layout,
)
from lazybuild.estargz import LayerIndex, TOCEntry
from tests.unit.erofs.test_erofs_layout import LATER, Blob, entry, index_of, rich_entries

TOC_DIGEST = "sha256:" + "ab" * 32


def layer_entries() -> list[TOCEntry]:
    """The rich layer, plus a directory over several blocks, files in one shared gzip
    member, a file of exactly one block and files with their own mtimes."""
    blob = Blob()
    blob.offset = 1 << 20  # after the rich layer's files
    entries = rich_entries()
    entries += [entry("many", "dir")]
    entries += [blob.file(f"many/{i:04d}-" + "n" * 60, 1 + i * 37) for i in range(400)]
    shared = blob.file("member/a", 10)
    entries += [entry("member", "dir"), shared]
    for name, inner in (("member/b", 10), ("member/c", 30)):
        later = entry(name, size=20, offset=shared.offset, inner_offset=inner)
        later.digest = later.chunk_digest = "sha256:" + "0" * 64
        entries.append(later)
    entries += [blob.file("block", BLOCK_SIZE), blob.file("late", 3, modtime=LATER)]
    entries += blob.big_file("big", (3 << 20) + 5, chunk=1 << 20)
    return entries


def fresh_index() -> LayerIndex:
    """The layer's index as another process opening it would have it."""
    return index_of(layer_entries())


def assert_same(restored: ErofsLayout, built: ErofsLayout) -> None:
    assert restored.metadata == built.metadata
    assert restored.data_start == built.data_start
    assert restored.image_size == built.image_size
    assert restored.build_time == built.build_time
    assert restored.uuid == built.uuid
    assert restored.root_nid == built.root_nid
    assert restored.stats == built.stats
    assert [(e.offset, e.size, e.node) for e in restored.extents.extents] == [
        (e.offset, e.size, e.node) for e in built.extents.extents
    ]


def kept_parts() -> LayoutParts:
    index = fresh_index()
    parts = layout_parts(build_layout(index, TOC_DIGEST), index)
    assert parts is not None
    return parts


def test_restored_from_another_index_of_the_toc_is_the_built_layout() -> None:
    parts = kept_parts()
    index = fresh_index()
    restored = restore_layout(index, TOC_DIGEST, parts)
    built = build_layout(index, TOC_DIGEST)
    assert_same(restored, built)
    assert len(built.extents) == len(parts.files) > 400
    # Lookups by file still lead to this index's nodes.
    node = index.lookup("member/b")
    assert node is not None and restored.extents.extent_of(node) == built.extents.extent_of(node)


def test_parts_are_only_taken_with_the_index_the_layout_was_built_from() -> None:
    built = build_layout(fresh_index(), TOC_DIGEST)
    assert layout_parts(built, fresh_index()) is None


def test_a_hardlinked_file_is_kept_once_by_its_first_name() -> None:
    files = dict(kept_parts().files)
    assert "etc/passwd" in files and "etc/hard" not in files


def _replace_files(parts: LayoutParts, files: list[tuple[str, int]]) -> LayoutParts:
    return dataclasses.replace(parts, files=tuple(files))


@pytest.mark.parametrize(
    ("spoil", "message"),
    [
        (lambda p: dataclasses.replace(p, metadata=p.metadata[:-BLOCK_SIZE]), "bytes of metadata"),
        (
            lambda p: dataclasses.replace(
                p, metadata=p.metadata[:-BLOCK_SIZE], data_start=p.data_start - BLOCK_SIZE
            ),
            "end at",
        ),
        (lambda p: dataclasses.replace(p, data_start=p.data_start + 1), "bytes of metadata"),
        (lambda p: dataclasses.replace(p, metadata=bytes(len(p.metadata))), "no EROFS superblock"),
        (
            lambda p: dataclasses.replace(
                p, metadata=p.metadata[:2000] + bytes([p.metadata[2000] ^ 1]) + p.metadata[2001:]
            ),
            "checksum",
        ),
        (lambda p: _replace_files(p, [*p.files[:-1]]), "stats"),
        (lambda p: _replace_files(p, [("nowhere", 5), *p.files[1:]]), "not a file"),
        (lambda p: _replace_files(p, [("etc", 5), *p.files[1:]]), "not a file"),
        (lambda p: _replace_files(p, [(p.files[0][0], p.files[0][1] + 1), *p.files[1:]]), "not a"),
        (lambda p: _replace_files(p, [p.files[0], ("etc/hard", 900), *p.files[2:]]), "twice"),
        (
            lambda p: dataclasses.replace(
                p, stats=dataclasses.replace(p.stats, inodes=p.stats.inodes + 1)
            ),
            "stats",
        ),
    ],
    ids=[
        "metadata-short",
        "data-start-moved",
        "data-start-unaligned",
        "no-superblock",
        "superblock-checksum",
        "file-missing",
        "path-not-in-layer",
        "path-a-directory",
        "size-differs",
        "file-twice",
        "inode-count",
    ],
)
def test_parts_that_do_not_fit_are_refused(
    spoil: Callable[[LayoutParts], LayoutParts], message: str
) -> None:
    parts = kept_parts()
    assert parts.files[0] == ("etc/passwd", 900)  # the spoilers above rely on it
    with pytest.raises(StoredLayoutError, match=message):
        restore_layout(fresh_index(), TOC_DIGEST, spoil(parts))


def test_parts_of_another_toc_digest_are_refused() -> None:
    with pytest.raises(StoredLayoutError, match="not of TOC"):
        restore_layout(fresh_index(), "sha256:" + "cd" * 32, kept_parts())


def test_a_layer_without_file_data_restores_too() -> None:
    index = index_of([entry("", "dir"), entry("d", "dir"), entry("d/empty")])
    built = build_layout(index, TOC_DIGEST)
    parts = layout_parts(built, index)
    assert parts is not None and parts.files == ()
    assert_same(restore_layout(index, TOC_DIGEST, parts), built)
