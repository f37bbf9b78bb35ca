"""Mount records and stale-mount cleanup, for records whose processes are gone (no root)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from lazybuild.lazyfs import stale
from lazybuild.lazyfs.stale import MountRecord


def dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def make_record(state_dir: Path, record_id: str, pid: int) -> MountRecord:
    mountpoint = state_dir / "mnt" / record_id
    mountpoint.mkdir(parents=True)
    record = MountRecord(
        id=record_id, pid=pid, mountpoint=str(mountpoint), control=str(state_dir / "c.sock")
    )
    stale.write_record(state_dir, record)
    return record


def test_overlays_are_registered_and_unregistered(tmp_path: Path) -> None:
    make_record(tmp_path, "one", os.getpid())
    stale.register_overlay(tmp_path, "one", tmp_path / "a")
    stale.register_overlay(tmp_path, "one", tmp_path / "b")
    stale.register_overlay(tmp_path, "one", tmp_path / "a")
    stale.unregister_overlay(tmp_path, "one", tmp_path / "b")
    record = stale.read_record(stale.record_path(tmp_path, "one"))
    assert record is not None and record.overlays == [str(tmp_path / "a")]
    with pytest.raises(FileNotFoundError):
        stale.register_overlay(tmp_path, "nobody", tmp_path / "a")


def test_records_of_dead_or_foreign_processes_are_cleaned(tmp_path: Path) -> None:
    dead = make_record(tmp_path, "dead", dead_pid())
    # A live pid that is not a filesystem process (a recycled pid) is stale too.
    foreign = make_record(tmp_path, "foreign", os.getpid())
    (tmp_path / "mounts" / "junk.json").write_text("{not json")
    cleaned = stale.cleanup_stale_mounts(tmp_path)
    assert sorted(cleaned) == sorted([Path(dead.mountpoint), Path(foreign.mountpoint)])
    assert not list((tmp_path / "mounts").glob("*.json"))
    assert not Path(dead.mountpoint).exists()


def test_no_state_no_work(tmp_path: Path) -> None:
    assert stale.cleanup_stale_mounts(tmp_path / "absent") == []


def test_mountinfo_unescaping() -> None:
    assert "/" in stale.mounted_paths()
    assert stale._unescape("/a\\040b\\134c") == "/a b\\c"


def test_local_overlay_records_live_as_long_as_their_owner(tmp_path: Path) -> None:
    overlay = tmp_path / "work" / "rootfs"
    with stale.local_overlays_recorded(tmp_path, "optimize-1"):
        stale.register_overlay(tmp_path, "optimize-1", overlay)
        # Its owner (this process) is alive: another command's cleanup leaves it alone.
        assert stale.cleanup_stale_mounts(tmp_path) == []
        assert stale.record_path(tmp_path, "optimize-1").exists()
    assert not stale.record_path(tmp_path, "optimize-1").exists()

    # The owner was killed inside: the next cleanup takes the record (and would unmount
    # the overlay if it were still mounted).
    orphan = MountRecord(
        id="optimize-2", pid=0, mountpoint="", control="", owner_pid=dead_pid(),
        overlays=[str(overlay)],
    )  # fmt: skip
    stale.write_record(tmp_path, orphan)
    assert stale.cleanup_stale_mounts(tmp_path) == [overlay]
    assert not stale.record_path(tmp_path, "optimize-2").exists()
