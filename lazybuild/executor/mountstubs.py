"""Mount points runc has to create in the rootfs, and their removal afterwards.

runc creates a missing mount destination (an empty file for /etc/hosts on an image
without one, directories for a new path) in the writable rootfs. Left there, they
would become part of the layer a RUN step produces; buildkit removes them too.
"""

from __future__ import annotations

import contextlib
import os
import stat
from collections.abc import Iterable
from pathlib import Path

from lazybuild.executor.rootpath import resolve_in_root


def missing_mount_points(root: Path, destinations: Iterable[str]) -> list[Path]:
    """For each destination not yet in `root`, the top-most component that is missing."""
    stubs: list[Path] = []
    for destination in destinations:
        host_path = resolve_in_root(root, destination)
        if os.path.lexists(host_path):
            continue
        top = host_path
        while top.parent != root and not os.path.lexists(top.parent):
            top = top.parent
        if top not in stubs:
            stubs.append(top)
    return stubs


def remove_mount_stubs(stubs: Iterable[Path]) -> None:
    """Remove what runc created, as long as it is still empty (never user data)."""
    for stub in stubs:
        _remove_if_empty(stub)


def _remove_if_empty(path: Path) -> None:
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    # Errors are ignored: a read-only rootfs keeps its stubs, as under Docker.
    with contextlib.suppress(OSError):
        if stat.S_ISDIR(mode):
            for child in os.scandir(path):
                _remove_if_empty(path / child.name)
            path.rmdir()
        elif stat.S_ISREG(mode) and os.lstat(path).st_size == 0:
            path.unlink()
