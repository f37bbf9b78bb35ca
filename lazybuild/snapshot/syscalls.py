"""mount(2) and umount2(2) through libc, so failures keep the kernel's errno.

The `mount` command would do, but it turns errno into its own prose and costs a
process per mount; the layer stacks of a build mount and unmount a lot.
"""

from __future__ import annotations

import ctypes
import os
from pathlib import Path

MS_RDONLY = 0x1
MS_REMOUNT = 0x20
MS_BIND = 0x1000
MNT_DETACH = 0x2

# The interpreter's own symbols include libc's; find_library("c") would run ldconfig.
_libc = ctypes.CDLL(None, use_errno=True)
_libc.mount.argtypes = [
    ctypes.c_char_p,
    ctypes.c_char_p,
    ctypes.c_char_p,
    ctypes.c_ulong,
    ctypes.c_char_p,
]
_libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]


def mount(source: str, target: Path, fstype: str | None, flags: int, data: str | None) -> None:
    """Raise OSError (with errno and target) when the kernel refuses."""
    result = _libc.mount(
        os.fsencode(source),
        os.fsencode(target),
        fstype.encode() if fstype else None,
        flags,
        os.fsencode(data) if data is not None else None,
    )
    if result != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), str(target))


def umount(target: Path, flags: int = 0) -> None:
    if _libc.umount2(os.fsencode(target), flags) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), str(target))
