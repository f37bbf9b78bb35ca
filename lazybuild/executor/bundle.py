"""The OCI bundle directory of one run: config.json in, everything out afterwards."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

from lazybuild.snapshot.mountinfo import mounts_under

CONFIG_NAME = "config.json"


def write_config(bundle_dir: Path, spec: dict[str, Any]) -> Path:
    path = bundle_dir / CONFIG_NAME
    # 0600: the spec holds the environment, which may carry secrets.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        json.dump(spec, out, indent=2)
    return path


def remove_bundle(bundle_dir: Path) -> None:
    """Delete the bundle, but never descend into a mount below it.

    Callers may mount the rootfs at bundle/rootfs (buildkit's layout); deleting
    through that mount would wipe the container's upper dir or, worse, a lower
    layer. Such mounts and the directories leading to them are left to the caller.
    """
    mounted = mounts_under(bundle_dir)
    if not mounted:
        shutil.rmtree(bundle_dir, ignore_errors=True)
        return
    _remove_except(Path(os.path.realpath(bundle_dir)), set(mounted))


def _remove_except(directory: Path, mounted: set[Path]) -> None:
    leading_to_mounts = {parent for point in mounted for parent in point.parents}
    for entry in os.scandir(directory):
        path = directory / entry.name
        if path in mounted:
            continue  # the caller's mount: not ours to touch
        if path in leading_to_mounts:
            _remove_except(path, mounted)
        elif entry.is_dir(follow_symlinks=False):
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
