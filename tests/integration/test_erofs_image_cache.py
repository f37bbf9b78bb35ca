"""EROFS images kept in the state directory (``lazyfs.imagecache``) for real layers: the
kept image of each Debian layer is the one built, and ``lazybuild du`` and ``prune``,
run as a user runs them, show and remove what is kept."""

from __future__ import annotations

import os
import subprocess
import tarfile
from pathlib import Path

import pytest

from lazybuild.erofs import build_layout
from lazybuild.lazyfs.imagecache import entry_path, layout_for
from tests.integration.test_erofs_image import debian_layers
from tests.integration.test_lazy_commands import lazybuild_argv
from tests.support.erofsimage import estargz_from_tar, member, open_blob, tar_of


def _layer_blob(files: int) -> bytes:
    members: list[tuple[tarfile.TarInfo, bytes | None]] = [(member("d", tarfile.DIRTYPE), None)]
    members += [(member(f"d/{i:03d}"), b"x" * (i * 100)) for i in range(files)]
    return estargz_from_tar(tar_of(members))


def _images_row(state: Path) -> tuple[int, str]:
    """(images, size) from `lazybuild du`'s EROFS images row."""
    shown = subprocess.run(
        lazybuild_argv(state, "du"), capture_output=True, text=True, timeout=120, check=True
    ).stdout
    (row,) = [line for line in shown.splitlines() if line.startswith("EROFS images")]
    count, unit, *size = row.removeprefix("EROFS images").split()
    assert unit == "images", row
    return int(count), " ".join(size)


def _prune(state: Path, *args: str) -> str:
    return subprocess.run(
        lazybuild_argv(state, "prune", *args),
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout


def test_du_shows_the_kept_images_and_prune_removes_them(tmp_path: Path) -> None:
    state = tmp_path / "state"
    assert _images_row(state) == (0, "0 B")
    entries = []
    for files in (3, 40):
        opened = open_blob(_layer_blob(files))
        layout_for(state, opened.index, opened.toc_digest)
        kept = entry_path(state, opened.toc_digest)
        assert kept is not None and kept.is_file()
        entries.append(kept)
    count, size = _images_row(state)
    assert count == 2 and size != "0 B"
    # Keeping storage keeps them, as it keeps the other local state.
    assert "EROFS images" not in _prune(state, "--keep-storage", "1G")
    assert _images_row(state)[0] == 2
    pruned = _prune(state)
    assert "freed 2 EROFS images" in pruned, pruned
    assert not any(path.exists() for path in entries)
    assert _images_row(state) == (0, "0 B")


@pytest.mark.root
def test_each_debian_layer_comes_back_as_built(debian_image_layout: Path, tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("the Debian root filesystem needs root to make")
    for tar in debian_layers(debian_image_layout):
        blob = estargz_from_tar(tar)
        opened = open_blob(blob)
        layout_for(tmp_path, opened.index, opened.toc_digest)
        kept = entry_path(tmp_path, opened.toc_digest)
        assert kept is not None
        written = kept.stat().st_ino
        # As a second filesystem process would: the TOC opened again, the image kept.
        index = open_blob(blob).index
        restored = layout_for(tmp_path, index, opened.toc_digest)
        assert kept.stat().st_ino == written
        built = build_layout(index, opened.toc_digest)
        assert restored.metadata == built.metadata
        assert (restored.data_start, restored.image_size) == (built.data_start, built.image_size)
        assert (restored.uuid, restored.root_nid, restored.build_time, restored.stats) == (
            built.uuid,
            built.root_nid,
            built.build_time,
            built.stats,
        )
        assert restored.extents.extents == built.extents.extents
        assert len(built.extents) > 0
