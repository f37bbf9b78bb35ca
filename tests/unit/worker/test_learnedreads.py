"""Learned reads: keyed by command and base repository, stored per base layer position."""

from __future__ import annotations

from pathlib import Path

import pytest

from lazybuild.oci import mediatypes
from lazybuild.oci.descriptor import Descriptor
from lazybuild.worker import learnedreads
from lazybuild.worker.layers import LocalLayer, RemoteLayer, Snapshot
from lazybuild.worker.learnedreads import LearnedReads, step_key


def _remote(repository: str, digit: str) -> RemoteLayer:
    digest = "sha256:" + digit * 64
    return RemoteLayer(
        Descriptor(mediatypes.OCI_LAYER_GZIP, digest, 10),
        f"registry.test/{repository}@sha256:{'e' * 64}",
        "sha256:" + digit * 63 + "0",
    )


def test_the_key_follows_command_directory_and_base_repository(tmp_path: Path) -> None:
    local = LocalLayer("step", tmp_path / "step")
    old = Snapshot((_remote("gcc", "1"), _remote("gcc", "2"), local))
    # A newer version of the same base image: other digests, the same repository.
    new = Snapshot((_remote("gcc", "3"), _remote("gcc", "4"), local))
    key = step_key(["/bin/sh", "-c", "make"], "/src", old)
    assert key is not None
    assert step_key(["/bin/sh", "-c", "make"], "/src", new) == key
    assert step_key(["/bin/sh", "-c", "make all"], "/src", old) != key
    assert step_key(["/bin/sh", "-c", "make"], "/", old) != key
    other = Snapshot((_remote("clang", "1"), _remote("clang", "2")))
    assert step_key(["/bin/sh", "-c", "make"], "/src", other) != key
    assert step_key(["true"], "/", Snapshot((local,))) is None  # nothing lazy to learn


def test_records_round_trip_and_bad_ones_read_as_unknown(tmp_path: Path) -> None:
    store = LearnedReads(tmp_path / "learned")
    assert store.load("k") is None
    store.save("k", [["etc/passwd"], [], ["usr/bin/cc1", "usr/lib/libc.so.6"]])
    assert store.load("k") == [["etc/passwd"], [], ["usr/bin/cc1", "usr/lib/libc.so.6"]]
    (tmp_path / "learned" / "bad.json").write_text('{"version": 1, "layers": "no"}')
    assert store.load("bad") is None
    (tmp_path / "learned" / "torn.json").write_text('{"version": 1, "lay')
    assert store.load("torn") is None


def test_a_record_is_cut_at_the_file_bound(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(learnedreads, "MAX_FILES", 3)
    store = LearnedReads(tmp_path)
    store.save("k", [["a", "b"], ["c", "d"], ["e"]])
    assert store.load("k") == [["a", "b"], ["c"], []]


def test_a_new_record_adds_to_the_old_one_read_from_memory_unseen(tmp_path: Path) -> None:
    # The second run read libc from the kernel's page cache (an earlier step of the same
    # build had read it): the filesystem saw only cc1, and libc must stay in the record.
    store = LearnedReads(tmp_path)
    store.save("k", [["etc/passwd"], ["usr/lib/libc.so.6", "usr/bin/cc1"]])
    store.save("k", [[], ["usr/bin/cc1", "usr/bin/as"]])
    assert store.load("k") == [["etc/passwd"], ["usr/bin/cc1", "usr/bin/as", "usr/lib/libc.so.6"]]


def test_a_record_of_another_shape_is_replaced(tmp_path: Path) -> None:
    store = LearnedReads(tmp_path)
    store.save("k", [["a"], ["b"]])
    store.save("k", [["c"]])
    assert store.load("k") == [["c"]]
