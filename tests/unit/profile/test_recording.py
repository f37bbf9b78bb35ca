"""A workload's reads taken from a record file, and cut into each layer's first files."""

from __future__ import annotations

from pathlib import Path

from lazybuild.estargz.toc import PREFETCH_FILE_MAX_BYTES
from lazybuild.profile.layers import TarLayerContents, plan_layers
from lazybuild.profile.record import RecordEntry, write_record
from lazybuild.profile.recording import reads_from_record

MINE = "sha256:" + "ab" * 32
OTHER = "sha256:" + "cd" * 32


def test_a_record_file_gives_files_places_and_the_images_it_was_made_on(
    tmp_path: Path,
) -> None:
    path = tmp_path / "record.json"
    write_record(
        path,
        [
            RecordEntry("usr/bin/python3", MINE, 0),
            RecordEntry("data/big.bin", OTHER, 1, ((0, 4096),)),
        ],
    )
    reads = reads_from_record(path)
    assert reads.files == ("usr/bin/python3", "data/big.bin")
    assert reads.read_ranges == {"data/big.bin": ((0, 4096),)}
    assert reads.manifests == {MINE, OTHER}
    assert reads.workload is None


def test_each_layer_gets_its_files_and_big_ones_are_left_out() -> None:
    base = TarLayerContents({"usr": True, "usr/bin/python3": False}, {"usr/bin/python3": 10})
    top = TarLayerContents(
        {"data": True, "data/big.bin": False, "app.py": False},
        {"data/big.bin": PREFETCH_FILE_MAX_BYTES + 1, "app.py": 5},
    )
    plan = plan_layers(["app.py", "usr/bin/python3", "data/big.bin", "tmp/new"], [base, top])
    assert plan.first == (("usr/bin/python3",), ("app.py",))
    assert plan.left_out == ("data/big.bin",)
    assert plan.assignment.unassigned == ("tmp/new",)
