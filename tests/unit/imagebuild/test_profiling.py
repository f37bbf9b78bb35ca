"""Which recorded files go into a layer's prefetch region."""

from __future__ import annotations

from pathlib import Path

from lazybuild.estargz.toc import PREFETCH_FILE_MAX_BYTES
from lazybuild.profile.layers import DirectoryLayerContents, left_out_note, prefetchable


def test_files_too_large_to_prefetch_whole_are_left_to_on_demand_reads(tmp_path: Path) -> None:
    (tmp_path / "lib").mkdir()
    (tmp_path / "lib" / "small.so").write_bytes(b"x" * 100)
    with (tmp_path / "lib" / "modules").open("wb") as big:  # sparse: no disk needed
        big.truncate(PREFETCH_FILE_MAX_BYTES + 1)
    (tmp_path / "lib" / "edge").write_bytes(b"")
    left_out: list[str] = []
    kept = prefetchable(
        ["lib/small.so", "lib/modules", "lib/edge", "lib/gone"],
        DirectoryLayerContents(tmp_path).size,
        left_out,
    )
    # A path the layer no longer has stays listed: the writer skips what it lacks.
    assert kept == ("lib/small.so", "lib/edge", "lib/gone")
    assert left_out == ["lib/modules"]
    assert left_out_note(left_out) == (
        "1 file(s) over 33.6 MB left to on-demand reads (lib/modules)"
    )
