"""The local caches builds sent outlive their builds while the filesystem process they
were used with runs (it reads a layer through the copy it first opened it from), and
share their blobs."""

from __future__ import annotations

import hashlib
from pathlib import Path

from lazybuild.daemon.buildjob import KeptImports


def _received(root: Path, *blobs: bytes, wrong: bytes | None = None) -> Path:
    layout = root / "received"
    (layout / "blobs" / "sha256").mkdir(parents=True)
    (layout / "index.json").write_text("{}")
    for blob in blobs:
        (layout / "blobs" / "sha256" / hashlib.sha256(blob).hexdigest()).write_bytes(blob)
    if wrong is not None:
        (layout / "blobs" / "sha256" / ("0" * 64)).write_bytes(wrong)
    return layout


def test_layouts_stay_while_their_process_runs_and_share_blobs(tmp_path: Path) -> None:
    kept = KeptImports(tmp_path / "builds")
    first_process, second_process = object(), object()
    first = kept.place(_received(tmp_path / "a", b"layer", b"config"))
    second = kept.place(_received(tmp_path / "b", b"layer", wrong=b"not its digest"))
    layer = hashlib.sha256(b"layer").hexdigest()
    assert (first / "blobs/sha256" / layer).stat().st_ino == (
        second / "blobs/sha256" / layer
    ).stat().st_ino
    store = tmp_path / "builds" / "imported-blobs"
    assert {p.name for p in store.iterdir()} == {layer, hashlib.sha256(b"config").hexdigest()}

    kept.release([first], first_process)
    assert first.is_dir()  # the process that may read through it still runs
    kept.release([second], first_process)
    assert first.is_dir() and second.is_dir()
    kept.release([], second_process)  # a later build's process: the first one stopped
    assert not first.exists() and not second.exists()
    assert list(store.iterdir()) == []


def test_without_a_running_process_a_layout_goes_with_its_build(tmp_path: Path) -> None:
    kept = KeptImports(tmp_path / "builds")
    layout = kept.place(_received(tmp_path / "a", b"layer"))
    kept.release([layout], None)
    assert not layout.exists()
    assert list((tmp_path / "builds" / "imported-blobs").iterdir()) == []
