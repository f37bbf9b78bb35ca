"""Whole images of layers whose chunks are all local (``lazyfs.whole_images``): written
only from chunks that prove their digests, byte for byte the image the filesystem
process serves, found only when sound, never left half-written, and bounded."""

from __future__ import annotations

import os
import tarfile
import threading
from pathlib import Path

import pytest

from lazybuild.cache.chunkcache import ChunkCache
from lazybuild.erofs import ErofsLayout, build_layout
from lazybuild.estargz import OpenedLayer
from lazybuild.lazyfs import whole_images
from lazybuild.lazyfs.imagecache import IMAGE_CACHE_DIR, STAGING_DIR
from lazybuild.lazyfs.whole_images import (
    find_whole_image,
    whole_image_path,
    write_whole_image,
)
from tests.support.erofsimage import (
    blob_reader,
    estargz_from_tar,
    member,
    open_blob,
    tar_of,
    write_image,
)

MAX_BYTES = 1 << 30


def _layer(seed: int, files: int = 30) -> tuple[bytes, OpenedLayer, ErofsLayout]:
    members: list[tuple[tarfile.TarInfo, bytes | None]] = [(member("d", tarfile.DIRTYPE), None)]
    for i in range(files):
        # Sizes that cross chunk and block boundaries, and an empty file.
        data = bytes((seed + i + k) % 251 for k in range(i * 977))
        members.append((member(f"d/f{i:02d}"), data))
    members.append((member("d/big"), os.urandom(3 << 20)))
    blob = estargz_from_tar(tar_of(members))
    opened = open_blob(blob)
    return blob, opened, build_layout(opened.index, opened.toc_digest)


def _cached(tmp_path: Path, blob: bytes, opened: OpenedLayer) -> ChunkCache:
    cache = ChunkCache(tmp_path / "cache")
    read = blob_reader(blob)
    for node in opened.index.walk():
        if node.type == "reg":
            for chunk, (_, data) in zip(node.chunks, read(node), strict=True):
                cache.put(chunk.digest, data)
    return cache


def _drop(cache: ChunkCache, digest: str) -> None:
    hex_digest = digest.removeprefix("sha256:")
    (cache.root / "chunks" / "sha256" / hex_digest[:2] / hex_digest).unlink()


def _staged(state: Path) -> list[Path]:
    staging = state / IMAGE_CACHE_DIR / STAGING_DIR
    return list(staging.iterdir()) if staging.is_dir() else []


def test_the_whole_image_is_the_served_image_and_is_found(tmp_path: Path) -> None:
    blob, opened, layout = _layer(1)
    state = tmp_path / "state"
    written = write_whole_image(
        state, opened.toc_digest, layout, _cached(tmp_path, blob, opened), max_bytes=MAX_BYTES
    )
    assert written is not None and written == whole_image_path(state, opened.toc_digest)
    expected = tmp_path / "expected.img"
    write_image(layout, expected, blob_reader(blob))  # an independent writer
    assert written.read_bytes() == expected.read_bytes()
    assert find_whole_image(state, opened.toc_digest) == written
    assert _staged(state) == []


def test_no_image_without_every_chunk(tmp_path: Path) -> None:
    blob, opened, layout = _layer(2)
    cache = _cached(tmp_path, blob, opened)
    big = opened.index.lookup("d/big")
    assert big is not None
    _drop(cache, big.chunks[-1].digest)
    state = tmp_path / "state"
    assert write_whole_image(state, opened.toc_digest, layout, cache, max_bytes=MAX_BYTES) is None
    assert find_whole_image(state, opened.toc_digest) is None
    assert _staged(state) == []


def test_a_cached_chunk_that_fails_its_digest_is_never_copied(tmp_path: Path) -> None:
    blob, opened, layout = _layer(3)
    cache = _cached(tmp_path, blob, opened)
    node = opened.index.lookup("d/f07")
    assert node is not None
    chunk = node.chunks[0]
    _drop(cache, chunk.digest)
    cache.put(chunk.digest, b"\0" * chunk.size)  # whole by its CRC, wrong by its digest
    state = tmp_path / "state"
    assert write_whole_image(state, opened.toc_digest, layout, cache, max_bytes=MAX_BYTES) is None
    assert whole_images.usage(state).entries == 0
    assert _staged(state) == []


def test_a_stopped_write_leaves_nothing(tmp_path: Path) -> None:
    blob, opened, layout = _layer(4)
    stopping = threading.Event()
    stopping.set()
    state = tmp_path / "state"
    cache = _cached(tmp_path, blob, opened)
    kept = write_whole_image(
        state, opened.toc_digest, layout, cache, max_bytes=MAX_BYTES, stopping=stopping
    )
    assert kept is None
    assert whole_images.usage(state).entries == 0
    assert _staged(state) == []


@pytest.mark.parametrize(
    "damage",
    ["truncated", "another TOC's", "not EROFS"],
)
def test_an_unsound_image_is_not_found_and_is_removed(tmp_path: Path, damage: str) -> None:
    state = tmp_path / "state"
    blob, opened, layout = _layer(5)
    path = write_whole_image(
        state, opened.toc_digest, layout, _cached(tmp_path, blob, opened), max_bytes=MAX_BYTES
    )
    assert path is not None
    if damage == "truncated":
        os.truncate(path, path.stat().st_size - 4096)
    elif damage == "another TOC's":
        other_blob, other, other_layout = _layer(6)
        other_path = write_whole_image(
            state,
            other.toc_digest,
            other_layout,
            _cached(tmp_path / "other", other_blob, other),
            max_bytes=MAX_BYTES,
        )
        assert other_path is not None
        other_path.replace(path)
    else:
        with path.open("r+b") as image:
            image.seek(1024)
            image.write(b"\0\0\0\0")
    assert find_whole_image(state, opened.toc_digest) is None
    assert not path.exists()


def test_images_beyond_the_bound_go_least_recently_used_first(tmp_path: Path) -> None:
    state = tmp_path / "state"
    paths = []
    for seed in (7, 8, 9):
        blob, opened, layout = _layer(seed)
        cache = _cached(tmp_path / f"cache{seed}", blob, opened)
        size = layout.image_size
        path = write_whole_image(state, opened.toc_digest, layout, cache, max_bytes=2 * size + 4096)
        assert path is not None
        paths.append(path)
        os.utime(path, (1000.0 * seed, 1000.0 * seed))  # oldest first
    assert [p.exists() for p in paths] == [False, True, True]
    assert whole_images.usage(state).entries == 2
    assert whole_images.prune(state, keep_bytes=paths[1].stat().st_size).entries == 1
    assert [p.exists() for p in paths] == [False, False, True]
    assert whole_images.prune(state).entries == 1
    assert whole_images.usage(state).entries == 0


def test_no_image_is_kept_for_a_digest_that_is_not_sha256(tmp_path: Path) -> None:
    assert whole_image_path(tmp_path, "sha512:" + "0" * 128) is None
    assert whole_image_path(tmp_path, None) is None
    assert find_whole_image(tmp_path, None) is None
