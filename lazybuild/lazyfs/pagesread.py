"""The places of a file the kernel holds in its page cache (``mincore(2)``), as byte
ranges.

A layer mounted from its whole image (``whole_images``) is read by the kernel alone, so
the read recorder never sees where a workload read in its big files. Dropping those
files' pages before the workload and asking which are back after it answers the same
question (pages the kernel read ahead included, as the recorder sees them too).
"""

from __future__ import annotations

import ctypes
import mmap
import os
from pathlib import Path

__all__ = ["resident_ranges"]

_PAGE = mmap.PAGESIZE
_libc = ctypes.CDLL(None, use_errno=True)
_libc.mmap.restype = ctypes.c_void_p
_libc.mmap.argtypes = [
    ctypes.c_void_p,
    ctypes.c_size_t,
    ctypes.c_int,
    ctypes.c_int,
    ctypes.c_int,
    ctypes.c_long,
]
_libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
_libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p]
_MAP_FAILED = ctypes.c_void_p(-1).value


def resident_ranges(path: Path) -> list[tuple[int, int]]:
    """(offset, length) runs of ``path``'s bytes whose pages are cached, in file order
    (the last one clipped to the file's size). Raises OSError."""
    descriptor = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        size = os.fstat(descriptor).st_size
        if size == 0:
            return []
        pages = (size + _PAGE - 1) // _PAGE
        vector = (ctypes.c_ubyte * pages)()
        address = _libc.mmap(None, size, mmap.PROT_READ, mmap.MAP_SHARED, descriptor, 0)
        if address is None or address == _MAP_FAILED:
            error = ctypes.get_errno()
            raise OSError(error, f"mmap: {os.strerror(error)}", str(path))
        try:
            if _libc.mincore(address, size, vector) != 0:
                error = ctypes.get_errno()
                raise OSError(error, f"mincore: {os.strerror(error)}", str(path))
        finally:
            _libc.munmap(address, size)
    finally:
        os.close(descriptor)
    ranges: list[tuple[int, int]] = []
    start: int | None = None
    for page, flags in enumerate(bytes(vector)):
        if flags & 1 and start is None:
            start = page
        elif not flags & 1 and start is not None:
            ranges.append((start * _PAGE, (page - start) * _PAGE))
            start = None
    if start is not None:
        ranges.append((start * _PAGE, size - start * _PAGE))
    return ranges
