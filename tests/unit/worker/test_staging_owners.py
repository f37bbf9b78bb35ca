"""Temporary files in the build store's staging directory name their owner, so a
concurrent build's cleanup leaves a live build's export alone (it deleted them)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from lazybuild.worker.layerstore import LayerStore


def test_a_live_owners_staging_files_survive_another_builds_cleanup(tmp_path: Path) -> None:
    store = LayerStore(tmp_path)
    mine = store.staging_file("export", ".tar")
    mine.write_bytes(b"in progress")
    orphan = store.staging_dir / "export-0123456789abcdef.tar"  # names no owner
    orphan.write_bytes(b"left by a crash")
    store.clean_staging()
    assert mine.exists()
    assert not orphan.exists()


def test_a_staging_area_interrupted_while_it_is_made_leaves_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An interrupt between two of the area's directories removes what was made."""
    store = LayerStore(tmp_path)
    real_mkdir = Path.mkdir
    made: list[Path] = []

    def mkdir_then_interrupted(path: Path, *args: Any, **kwargs: Any) -> None:
        real_mkdir(path, *args, **kwargs)
        made.append(path)
        if len(made) == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(Path, "mkdir", mkdir_then_interrupted)
    with pytest.raises(KeyboardInterrupt), store.staging():
        pytest.fail("the area was handed out")
    monkeypatch.undo()
    assert made, "no directory was made"
    assert list(store.staging_dir.iterdir()) == []
