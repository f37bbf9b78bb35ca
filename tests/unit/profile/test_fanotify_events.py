"""Turning fanotify events into container paths (no kernel marks needed)."""

from __future__ import annotations

import os
import struct
from pathlib import Path

import pytest

from lazybuild.profile.fanotify import (
    FAN_OPEN,
    FAN_Q_OVERFLOW,
    AccessLog,
    FanotifyError,
    FileEvent,
    FilesystemWatch,
    container_path,
)

METADATA = struct.Struct("=IBBHQii")


def test_container_paths_are_relative_to_the_container_root() -> None:
    root = "/var/lib/lazybuild/containers/x/rootfs"
    assert container_path("/usr/bin/python3.11", root) == "usr/bin/python3.11"
    assert container_path("/etc/hosts (deleted)", root) == "etc/hosts"
    # Opened through the host's mount: lazybuild or runc setting the container up.
    assert container_path(root + "/etc/passwd", root) is None
    assert container_path(root, root) is None
    assert container_path("pipe:[1234]", root) is None
    assert container_path("/", root) is None


def test_access_log_keeps_first_accesses_in_order(tmp_path: Path) -> None:
    log = AccessLog(tmp_path)
    log.add([FileEvent("/b", FAN_OPEN, 1), FileEvent("/a", FAN_OPEN, 1)])
    log.add([FileEvent("/b", FAN_OPEN, 2), FileEvent(f"{tmp_path}/c", FAN_OPEN, 1)])
    assert log.files == ("b", "a")
    assert log.ignored == 1


def _parse(data: bytes) -> tuple[list[FileEvent], bool]:
    watch = object.__new__(FilesystemWatch)  # no kernel group: only the parser
    watch.overflowed = False
    return watch._parse(data), watch.overflowed


def test_events_name_their_file_and_close_its_descriptor() -> None:
    fd = os.open("/dev/null", os.O_RDONLY)
    data = METADATA.pack(METADATA.size, 3, 0, METADATA.size, FAN_OPEN, fd, 42)
    data += METADATA.pack(METADATA.size, 3, 0, METADATA.size, FAN_Q_OVERFLOW, -1, 0)
    events, overflowed = _parse(data)
    assert events == [FileEvent("/dev/null", FAN_OPEN, 42)]
    assert overflowed
    with pytest.raises(OSError):
        os.fstat(fd)


def test_an_unknown_metadata_version_is_refused() -> None:
    with pytest.raises(FanotifyError, match="version"):
        _parse(METADATA.pack(METADATA.size, 2, 0, METADATA.size, FAN_OPEN, -1, 0))
