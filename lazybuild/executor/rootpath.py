"""Paths inside a container's root filesystem, resolved as the container would see them.

An image's symlinks are relative to the image, not to this host: `/etc/passwd ->
/usr/lib/passwd` must land in the rootfs, and `../../..` must stop at its top.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path, PurePosixPath

from lazybuild.executor.errors import ContainerError

# Linux gives up after 40 links in one lookup; an image's cycle must not hang us.
_MAX_SYMLINKS = 40


def resolve_in_root(root: Path, path: str) -> Path:
    """The host path of container path `path`, symlinks followed inside `root`.

    Components that do not exist are kept as they are, so the result may name a
    file still to be created.
    """
    pending = list(PurePosixPath("/", path).parts[1:])
    resolved: list[str] = []
    links_followed = 0
    while pending:
        part = pending.pop(0)
        if part in ("", "."):
            continue
        if part == "..":
            if resolved:
                resolved.pop()
            continue
        candidate = root.joinpath(*resolved, part)
        try:
            mode = os.lstat(candidate).st_mode
        except (FileNotFoundError, NotADirectoryError):
            resolved.append(part)
            continue
        if not stat.S_ISLNK(mode):
            resolved.append(part)
            continue
        links_followed += 1
        if links_followed > _MAX_SYMLINKS:
            raise ContainerError(f"too many levels of symbolic links resolving {path} in {root}")
        target = PurePosixPath(os.readlink(candidate))
        if target.is_absolute():
            resolved = []
        pending[:0] = [p for p in target.parts if p != "/"]
    return root.joinpath(*resolved)


def ensure_working_dir(root: Path, cwd: str) -> None:
    """Create `cwd` in the rootfs if missing (root-owned 0755, as Docker does)."""
    host_path = resolve_in_root(root, cwd)
    if host_path.is_dir():
        return
    try:
        # 0o755 regardless of our umask: the container's user must be able to enter it.
        for missing in reversed([host_path, *host_path.parents]):
            if missing == root or root not in missing.parents or missing.exists():
                continue
            missing.mkdir(mode=0o755)
            os.chmod(missing, 0o755)
    except OSError as exc:
        raise ContainerError(
            f"working directory {cwd} does not exist and cannot be created in {root}: "
            f"{exc.strerror}"
        ) from None
    if not host_path.is_dir():
        raise ContainerError(f"working directory {cwd} is not a directory in {root}")
