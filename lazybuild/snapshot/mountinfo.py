"""What is mounted where, from /proc/self/mountinfo (our own mount namespace)."""

from __future__ import annotations

import os
import re
from pathlib import Path

# mountinfo escapes space, tab, newline and backslash in paths as \ooo octal.
_OCTAL_ESCAPE = re.compile(r"\\([0-7]{3})")


def _unescape(field: str) -> str:
    return _OCTAL_ESCAPE.sub(lambda match: chr(int(match.group(1), 8)), field)


def mount_points() -> list[Path]:
    """Every mount point, in mount order (a later entry may stack on an earlier one)."""
    points: list[Path] = []
    with open("/proc/self/mountinfo", encoding="utf-8", errors="surrogateescape") as lines:
        for line in lines:
            fields = line.split(" ")
            if len(fields) > 4:  # field 5 is the mount point
                points.append(Path(_unescape(fields[4])))
    return points


def _canonical(path: Path) -> Path:
    # mountinfo shows resolved paths; a symlinked or relative spelling must match too.
    return Path(os.path.realpath(path))


def is_mounted(path: Path) -> bool:
    """True when `path` itself is a mount point."""
    return _canonical(path) in set(mount_points())


def mounts_under(directory: Path) -> list[Path]:
    """Mount points at or below `directory`, deepest first (the order to unmount them)."""
    root = _canonical(directory)
    found = {point for point in mount_points() if point == root or root in point.parents}
    return sorted(found, key=lambda point: len(point.parts), reverse=True)
