"""Temporary files in the build store's staging directory name their owner, so a
concurrent build's cleanup leaves a live build's export alone (it deleted them)."""

from __future__ import annotations

from pathlib import Path

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
