"""EROFS images kept in the state directory: a kept image is the built one, anything
wrong with an entry makes it be built again (never served), digests never cross,
writers in several processes at once and a writer killed mid-write leave sound
entries, and ``usage``/``remove_all`` see what is kept."""

from __future__ import annotations

import concurrent.futures
import hashlib
import multiprocessing
import os
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest

from lazybuild.cache.chunkcache import CacheUsage
from lazybuild.erofs import ErofsLayout, build_layout, layout_parts
from lazybuild.lazyfs.imagecache import (
    IMAGE_CACHE_DIR,
    MAGIC,
    STAGING_DIR,
    decode_entry,
    encode_entry,
    entry_path,
    layout_for,
    remove_all,
    usage,
    writer_fingerprint,
)
from lazybuild.state.processes import ProcessId
from tests.unit.erofs.test_erofs_stored import TOC_DIGEST, assert_same, fresh_index

OTHER_DIGEST = "sha256:" + "cd" * 32


def entry_of(state: Path, toc_digest: str = TOC_DIGEST) -> Path:
    path = entry_path(state, toc_digest)
    assert path is not None
    return path


def staged(state: Path) -> list[Path]:
    staging = state / IMAGE_CACHE_DIR / STAGING_DIR
    return list(staging.iterdir()) if staging.is_dir() else []


def test_a_kept_image_is_the_built_one_and_is_not_written_again(tmp_path: Path) -> None:
    opened = fresh_index()
    first = layout_for(tmp_path, opened, TOC_DIGEST)
    kept = entry_of(tmp_path)
    written = kept.stat()
    assert_same(first, build_layout(opened, TOC_DIGEST))
    # Another process opening the layer has another index of the same TOC.
    index = fresh_index()
    again = layout_for(tmp_path, index, TOC_DIGEST)
    assert_same(again, build_layout(index, TOC_DIGEST))
    after = kept.stat()
    assert (after.st_ino, after.st_mtime_ns) == (written.st_ino, written.st_mtime_ns)
    assert staged(tmp_path) == []


def _flip_in_metadata(data: bytes) -> bytes:
    at = len(data) - 5000  # in the metadata, the entry's last part
    return data[:at] + bytes([data[at] ^ 0x10]) + data[at + 1 :]


def _other_writer(data: bytes) -> bytes:
    parts = decode_entry(data, TOC_DIGEST, _writer())
    return encode_entry(parts, TOC_DIGEST, "0" * 64)


def _other_format(data: bytes) -> bytes:
    return MAGIC.replace(b"cache 1", b"cache 9") + data[len(MAGIC) :]


def _other_toc(data: bytes) -> bytes:
    # A sound entry in every other way: the one kept for another TOC, moved here.
    index = fresh_index()
    parts = layout_parts(build_layout(index, OTHER_DIGEST), index)
    assert parts is not None
    return encode_entry(parts, OTHER_DIGEST, _writer())


def _claims_this_toc(data: bytes) -> bytes:
    # Another TOC's image under this TOC's name, with a header that claims it: the
    # superblock's UUID gives it away.
    index = fresh_index()
    parts = layout_parts(build_layout(index, OTHER_DIGEST), index)
    assert parts is not None
    return encode_entry(parts, TOC_DIGEST, _writer())


def _writer() -> str:
    writer = writer_fingerprint()
    assert writer is not None
    return writer


@pytest.mark.parametrize(
    "spoil",
    [
        _flip_in_metadata,
        lambda data: data[: len(data) // 2],
        lambda data: data[:-1],
        lambda data: b"",
        lambda data: os.urandom(len(data)),
        _other_writer,
        _other_format,
        _other_toc,
        _claims_this_toc,
    ],
    ids=[
        "flipped-bit",
        "truncated-half",
        "truncated-by-one",
        "empty",
        "garbage",
        "other-writer",
        "other-format",
        "other-toc",
        "other-toc-image-relabelled",
    ],
)
def test_an_unsound_entry_is_built_again_and_replaced(
    tmp_path: Path, spoil: Callable[[bytes], bytes]
) -> None:
    layout_for(tmp_path, fresh_index(), TOC_DIGEST)
    kept = entry_of(tmp_path)
    kept.write_bytes(spoil(kept.read_bytes()))
    spoiled = kept.stat().st_ino
    index = fresh_index()
    layout = layout_for(tmp_path, index, TOC_DIGEST)
    assert_same(layout, build_layout(index, TOC_DIGEST))
    assert kept.stat().st_ino != spoiled  # written again
    decode_entry(kept.read_bytes(), TOC_DIGEST, _writer())  # and sound now


def test_another_toc_digest_never_hits(tmp_path: Path) -> None:
    index = fresh_index()
    first = layout_for(tmp_path, index, TOC_DIGEST)
    other = layout_for(tmp_path, index, OTHER_DIGEST)
    assert_same(other, build_layout(index, OTHER_DIGEST))
    assert other.uuid != first.uuid
    assert entry_of(tmp_path) != entry_of(tmp_path, OTHER_DIGEST)
    assert entry_of(tmp_path, OTHER_DIGEST).is_file()
    assert usage(tmp_path).entries == 2


@pytest.mark.parametrize("toc_digest", [None, "sha512:" + "ab" * 64, "sha256:../../x", ""])
def test_nothing_is_kept_without_a_sha256_toc_digest(
    tmp_path: Path, toc_digest: str | None
) -> None:
    index = fresh_index()
    assert_same(layout_for(tmp_path, index, toc_digest), build_layout(index, toc_digest))
    assert not (tmp_path / IMAGE_CACHE_DIR).exists()


def test_a_state_directory_that_cannot_keep_it_still_gets_the_image(tmp_path: Path) -> None:
    (tmp_path / IMAGE_CACHE_DIR).write_bytes(b"a file where the directory goes")
    index = fresh_index()
    assert_same(layout_for(tmp_path, index, TOC_DIGEST), build_layout(index, TOC_DIGEST))


def _open_repeatedly(state: str) -> list[str]:
    """In a process of its own: open the layer a few times; what each open gave."""
    seen = []
    for _ in range(6):
        layout = layout_for(Path(state), fresh_index(), TOC_DIGEST)
        seen.append(_signature(layout))
    return seen


def _signature(layout: ErofsLayout) -> str:
    digest = hashlib.sha256(layout.metadata)
    for extent in layout.extents.extents:
        digest.update(f"{extent.offset} {extent.size} {extent.node.name}\n".encode())
    digest.update(f"{layout.data_start} {layout.image_size} {layout.stats}".encode())
    return digest.hexdigest()


def test_writers_in_several_processes_at_once(tmp_path: Path) -> None:
    expected = _signature(build_layout(fresh_index(), TOC_DIGEST))
    context = multiprocessing.get_context("fork")
    with concurrent.futures.ProcessPoolExecutor(4, mp_context=context) as pool:
        results = list(pool.map(_open_repeatedly, [str(tmp_path)] * 4))
    assert [signature for seen in results for signature in seen] == [expected] * 24
    names = sorted(p.name for p in (tmp_path / IMAGE_CACHE_DIR).iterdir())
    assert names == sorted([STAGING_DIR, entry_of(tmp_path).name])
    assert staged(tmp_path) == []
    decode_entry(entry_of(tmp_path).read_bytes(), TOC_DIGEST, _writer())


# A writer that dies after writing its temporary file and before renaming it.
_KILLED_WRITER = textwrap.dedent(
    """
    import os, sys
    from pathlib import Path
    from lazybuild.lazyfs.imagecache import layout_for
    from tests.unit.erofs.test_erofs_stored import TOC_DIGEST, fresh_index

    os.replace = lambda source, target: os._exit(9)
    layout_for(Path(sys.argv[1]), fresh_index(), TOC_DIGEST)
    """
)


def test_a_writer_killed_mid_write_leaves_no_entry_and_its_leftover_goes(
    tmp_path: Path,
) -> None:
    died = subprocess.run(
        [sys.executable, "-c", _KILLED_WRITER, str(tmp_path)],
        cwd=Path(__file__).parents[3],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert died.returncode == 9, died.stderr
    assert not entry_of(tmp_path).exists()
    (leftover,) = staged(tmp_path)
    assert leftover.stat().st_size > 0
    assert usage(tmp_path).entries == 0 and usage(tmp_path).bytes > 0
    # The next open builds and keeps the image, and clears what the dead writer left.
    index = fresh_index()
    assert_same(layout_for(tmp_path, index, TOC_DIGEST), build_layout(index, TOC_DIGEST))
    assert entry_of(tmp_path).is_file() and staged(tmp_path) == []


def test_usage_and_remove_all(tmp_path: Path) -> None:
    assert usage(tmp_path) == CacheUsage(0, 0)
    assert remove_all(tmp_path) == CacheUsage(0, 0)
    index = fresh_index()
    layout_for(tmp_path, index, TOC_DIGEST)
    layout_for(tmp_path, index, OTHER_DIGEST)
    staging = tmp_path / IMAGE_CACHE_DIR / STAGING_DIR
    # What a dead writer left, and the file a live one (this process) is writing.
    dead = ProcessId(pid=2**22 + 7, start=1, boot=None).tag
    (staging / f"{dead}-x.meta.abc.tmp").write_bytes(b"x" * 10_000)
    live = staging / f"{ProcessId.current().tag}-y.meta.def.tmp"
    live.write_bytes(b"y" * 10_000)
    (tmp_path / IMAGE_CACHE_DIR / "README").write_text("not an entry")
    kept = usage(tmp_path)
    entries = [entry_of(tmp_path), entry_of(tmp_path, OTHER_DIGEST)]
    entry_bytes = sum(p.stat().st_blocks * 512 for p in entries)
    assert kept.entries == 2 and kept.bytes >= entry_bytes + 2 * 10_000
    freed = remove_all(tmp_path)
    assert freed.entries == 2 and entry_bytes < freed.bytes < kept.bytes
    assert not any(p.exists() for p in entries)
    assert staged(tmp_path) == [live]
    assert (tmp_path / IMAGE_CACHE_DIR / "README").exists()
    assert usage(tmp_path).entries == 0
    # Gone from the cache, the next open builds it again.
    assert_same(layout_for(tmp_path, index, TOC_DIGEST), build_layout(index, TOC_DIGEST))
    assert entry_of(tmp_path).is_file()
