"""Owners named by pid and start time: a reused pid does not keep a leftover alive."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from lazybuild.cache.chunkcache import ChunkCache
from lazybuild.executor.orphans import OWNER_ANNOTATION
from lazybuild.lazyfs import stale
from lazybuild.lazyfs.unpack import _new_partial_dir
from lazybuild.state.processes import (
    ProcessId,
    boot_id,
    identity_alive,
    owner_alive,
    process_identity,
    start_time,
)
from lazybuild.worker.layerstore import LayerStore

HEX = "ab" * 32


def dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


@pytest.fixture
def sleeper() -> Iterator[subprocess.Popen[bytes]]:
    """A live child of this process (what ``stale`` takes for one of its filesystems)."""
    process = subprocess.Popen(["sleep", "60"])
    try:
        yield process
    finally:
        process.kill()
        process.wait()


def impostor(pid: int) -> ProcessId:
    """``pid`` as it would be named had another process with that pid started earlier."""
    me = ProcessId.of(pid)
    assert me is not None and me.start is not None
    return ProcessId(pid, me.start - 1, me.boot)


def test_identity_names_this_process_and_not_a_reused_pid() -> None:
    me = ProcessId.current()
    assert me.pid == os.getpid() and me.start == start_time(os.getpid())
    assert me.boot == boot_id() and len(me.boot) == 8
    assert me.alive()
    assert not impostor(os.getpid()).alive()
    assert not ProcessId(os.getpid(), me.start, "00000000").alive()  # another boot
    assert ProcessId(os.getpid()).alive()  # a legacy record: the pid decides
    assert not ProcessId(dead_pid()).alive()


def test_spellings_round_trip() -> None:
    me = ProcessId.current()
    assert ProcessId.parse(str(me)) == me
    assert ProcessId.parse_tag(me.tag + "-0123abcd") == me
    assert ProcessId.parse_tag(me.tag) == me
    # Older spellings: pid:start (runc annotations), pid-token (file names).
    assert ProcessId.parse(f"{me.pid}:{me.start}") == ProcessId(me.pid, me.start)
    assert ProcessId.parse_tag("123-0123abcd") == ProcessId(123)
    assert ProcessId.parse_tag("123-12345678.tmp") == ProcessId(123)
    assert ProcessId.parse_tag("junk") is None
    assert ProcessId.parse("a:b") is None


def test_identity_alive_for_container_annotations() -> None:
    identity = process_identity(os.getpid())
    assert identity is not None and identity_alive(identity)
    me = ProcessId.current()
    assert identity_alive(f"{me.pid}:{me.start}")  # written before boot ids
    assert not identity_alive(str(impostor(os.getpid())))
    assert not identity_alive(str(os.getpid()))  # a bare pid names no container owner
    assert OWNER_ANNOTATION


def test_mount_record_of_a_live_pid_with_another_start_time_is_cleaned(
    tmp_path: Path, sleeper: subprocess.Popen[bytes]
) -> None:
    mountpoint = tmp_path / "mnt" / "reused"
    mountpoint.mkdir(parents=True)
    record = stale.MountRecord(
        id="reused",
        pid=sleeper.pid,
        mountpoint=str(mountpoint),
        control=str(tmp_path / "c.sock"),
        owner_pid=os.getpid(),
        pid_identity=str(impostor(sleeper.pid)),
    )
    stale.write_record(tmp_path, record)
    assert stale.cleanup_stale_mounts(tmp_path) == [mountpoint]
    assert not stale.record_path(tmp_path, "reused").exists()
    assert sleeper.poll() is None, "the stranger that got the pid is left alone"


def test_mount_records_get_identities_and_live_ones_stay(
    tmp_path: Path, sleeper: subprocess.Popen[bytes]
) -> None:
    mountpoint = tmp_path / "mnt" / "live"
    mountpoint.mkdir(parents=True)
    record = stale.MountRecord(
        id="live",
        pid=sleeper.pid,
        mountpoint=str(mountpoint),
        control=str(tmp_path / "c.sock"),
        owner_pid=os.getpid(),
    )
    stale.write_record(tmp_path, record)
    written = stale.read_record(stale.record_path(tmp_path, "live"))
    assert written is not None
    assert written.pid_identity == process_identity(sleeper.pid)
    assert written.owner_identity == str(ProcessId.current())
    assert stale.cleanup_stale_mounts(tmp_path) == []


def test_local_overlay_record_of_a_reused_owner_pid_is_cleaned(tmp_path: Path) -> None:
    overlay = tmp_path / "work" / "rootfs"
    record = stale.MountRecord(
        id="optimize",
        pid=0,
        mountpoint="",
        control="",
        owner_pid=os.getpid(),
        owner_identity=str(impostor(os.getpid())),
        overlays=[str(overlay)],
    )
    stale.write_record(tmp_path, record)
    assert stale.cleanup_stale_mounts(tmp_path) == [overlay]


def test_staging_areas_of_a_reused_pid_are_removed(tmp_path: Path) -> None:
    store = LayerStore(tmp_path)
    reused = store.staging_dir / f"{impostor(os.getpid()).tag}-0123456789abcdef"
    legacy_live = store.staging_dir / f"{os.getpid()}-0123456789abcdef"
    legacy_dead = store.staging_dir / f"{dead_pid()}-0123456789abcdef"
    for area in (reused, legacy_live, legacy_dead):
        (area / "upper").mkdir(parents=True)
    with store.staging() as mine:
        assert owner_alive(mine.root.name)
        store.clean_staging()
        assert mine.root.is_dir()
    assert sorted(store.staging_dir.iterdir()) == [legacy_live]


def test_leftovers_of_a_reused_pid_go_with_the_next_cleanup(tmp_path: Path) -> None:
    stranger = impostor(os.getpid()).tag
    staging = tmp_path / "build" / "staging" / f"{stranger}-0123456789abcdef"
    (staging / "upper").mkdir(parents=True)
    partial = tmp_path / "unpacked" / f".partial-{HEX}-{stranger}-0123abcd"
    partial.mkdir(parents=True)
    live_partial = tmp_path / "unpacked" / f".partial-{HEX}-{ProcessId.current().tag}-0123abcd"
    live_partial.mkdir()
    temp = tmp_path / "cache" / "staging" / f"{stranger}-0123456789abcdef.tmp"
    temp.parent.mkdir(parents=True)
    temp.write_bytes(b"half")
    assert stale.cleanup_stale_mounts(tmp_path) == []
    assert not staging.exists() and not partial.exists() and not temp.exists()
    assert live_partial.is_dir()


def test_unpack_partial_dirs_of_a_reused_pid_are_removed(tmp_path: Path) -> None:
    reused = tmp_path / f".partial-{HEX}-{impostor(os.getpid()).tag}-0123abcd"
    legacy_live = tmp_path / f".partial-{HEX}-{os.getpid()}-0123abcd"
    for directory in (reused, legacy_live):
        directory.mkdir()
    fresh = _new_partial_dir(tmp_path, HEX)
    assert ProcessId.parse_tag(fresh.name[len(f".partial-{HEX}-") :]) == ProcessId.current()
    assert not reused.exists()
    assert legacy_live.is_dir() and fresh.is_dir()


def test_chunk_cache_temp_files_of_a_reused_pid_are_removed(tmp_path: Path) -> None:
    staging = tmp_path / "staging"
    staging.mkdir()
    reused = staging / f"{impostor(os.getpid()).tag}-0123456789abcdef.tmp"
    mine = staging / f"{ProcessId.current().tag}-0123456789abcdef.tmp"
    legacy_dead = staging / f"{dead_pid()}-0123456789abcdef.tmp"
    for path in (reused, mine, legacy_dead):
        path.write_bytes(b"half")
    ChunkCache(tmp_path)
    assert sorted(staging.iterdir()) == [mine]
