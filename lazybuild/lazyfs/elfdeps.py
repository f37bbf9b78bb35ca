"""The shared libraries an ELF file will load, read from its own bytes.

When a program starts, the dynamic loader opens its ``DT_NEEDED`` libraries one after
the other, and each open of a file not fetched yet is a round trip. The list is in the
binary: the dynamic section names them (offsets into the dynamic string table). Knowing
it as soon as those bytes arrive lets the filesystem fetch all the libraries at once.

Works on whatever bytes are at hand: ``read(offset, size)`` returns them, or None when
they are not available yet (the caller tries again once more of the file has arrived).
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["ElfDependencies", "candidate_paths", "elf_dependencies", "is_elf"]

ELF_MAGIC = b"\x7fELF"
_PT_LOAD = 1
_PT_DYNAMIC = 2
_PT_INTERP = 3
_DT_NULL = 0
_DT_NEEDED = 1
_DT_STRTAB = 5
_DT_RPATH = 15
_DT_RUNPATH = 29
# Library names and search paths are short; a longer string is cut here, not read whole.
_MAX_STRING = 4096
_MAX_PROGRAM_HEADERS = 256
_MAX_DYNAMIC_ENTRIES = 4096

Read = Callable[[int, int], bytes | None]


@dataclass(frozen=True)
class ElfDependencies:
    interpreter: str | None  # PT_INTERP: the dynamic loader a program asks for
    needed: tuple[str, ...]  # DT_NEEDED, in the order the loader opens them
    search_paths: tuple[str, ...]  # DT_RUNPATH, else DT_RPATH (":"-separated, split)


@dataclass(frozen=True)
class _Layout:
    wide: bool  # ELFCLASS64
    order: str  # struct byte order: "<" or ">"


@dataclass(frozen=True)
class _Segment:
    kind: int
    offset: int
    vaddr: int
    filesz: int


class _UnavailableError(Exception):
    """Bytes not at hand yet."""


def is_elf(head: bytes) -> bool:
    return head[:4] == ELF_MAGIC


def elf_dependencies(read: Read) -> ElfDependencies | None:
    """The file's loader, libraries and search paths; None when the bytes needed are
    not all available yet. Raises ValueError for a file that is not usable ELF."""
    try:
        return _parse(read)
    except _UnavailableError:
        return None
    except struct.error as exc:
        raise ValueError(f"truncated ELF structure: {exc}") from None


def _bytes(read: Read, offset: int, size: int) -> bytes:
    data = read(offset, size)
    if data is None:
        raise _UnavailableError
    return data


def _parse(read: Read) -> ElfDependencies:
    ident = _bytes(read, 0, 16)
    if not is_elf(ident) or ident[4] not in (1, 2) or ident[5] not in (1, 2):
        raise ValueError("not an ELF file")
    layout = _Layout(wide=ident[4] == 2, order="<" if ident[5] == 1 else ">")
    segments = _program_headers(read, layout)
    interpreter = None
    for segment in segments:
        if segment.kind == _PT_INTERP and segment.filesz > 0:
            interpreter = _string(read, segment.offset, min(segment.filesz, _MAX_STRING))
    dynamic = next((s for s in segments if s.kind == _PT_DYNAMIC), None)
    if dynamic is None:
        return ElfDependencies(interpreter, (), ())  # static: loads nothing
    entries = _dynamic_entries(read, layout, dynamic)
    strtab_vaddr = next((value for tag, value in entries if tag == _DT_STRTAB), None)
    if strtab_vaddr is None:
        raise ValueError("dynamic section without a string table")
    strtab = _file_offset(segments, strtab_vaddr)
    needed = tuple(
        _string(read, strtab + value, _MAX_STRING) for tag, value in entries if tag == _DT_NEEDED
    )
    runpath = [value for tag, value in entries if tag == _DT_RUNPATH]
    rpath = [value for tag, value in entries if tag == _DT_RPATH]
    paths: list[str] = []
    for value in runpath or rpath:
        paths += [p for p in _string(read, strtab + value, _MAX_STRING).split(":") if p]
    return ElfDependencies(interpreter, needed, tuple(paths))


def _program_headers(read: Read, layout: _Layout) -> list[_Segment]:
    o = layout.order
    if layout.wide:
        phoff, phentsize, phnum = _unpack(read, 0x20, o + "Q", 0x36, o + "HH")
        fields = o + "IIQQQQQQ"  # type, flags, offset, vaddr, paddr, filesz, memsz, align
    else:
        phoff, phentsize, phnum = _unpack(read, 0x1C, o + "I", 0x2A, o + "HH")
        fields = o + "IIIIIIII"  # type, offset, vaddr, paddr, filesz, memsz, flags, align
    if phnum > _MAX_PROGRAM_HEADERS or phentsize < struct.calcsize(fields):
        raise ValueError("implausible program header table")
    table = _bytes(read, phoff, phentsize * phnum)
    segments = []
    for index in range(phnum):
        values = struct.unpack_from(fields, table, index * phentsize)
        if layout.wide:
            kind, _, offset, vaddr, _, filesz, _, _ = values
        else:
            kind, offset, vaddr, _, filesz, _, _, _ = values
        segments.append(_Segment(kind, offset, vaddr, filesz))
    return segments


def _unpack(read: Read, at: int, fmt: str, at2: int, fmt2: str) -> tuple[int, int, int]:
    (first,) = struct.unpack(fmt, _bytes(read, at, struct.calcsize(fmt)))
    second, third = struct.unpack(fmt2, _bytes(read, at2, struct.calcsize(fmt2)))
    return first, second, third


def _dynamic_entries(read: Read, layout: _Layout, dynamic: _Segment) -> list[tuple[int, int]]:
    entry = struct.Struct(layout.order + ("qQ" if layout.wide else "iI"))
    count = min(dynamic.filesz // entry.size, _MAX_DYNAMIC_ENTRIES)
    table = _bytes(read, dynamic.offset, count * entry.size)
    entries = []
    for tag, value in entry.iter_unpack(table):
        if tag == _DT_NULL:
            break
        entries.append((tag, value))
    return entries


def _file_offset(segments: list[_Segment], vaddr: int) -> int:
    for segment in segments:
        if segment.kind == _PT_LOAD and segment.vaddr <= vaddr < segment.vaddr + segment.filesz:
            return segment.offset + (vaddr - segment.vaddr)
    raise ValueError(f"address {vaddr:#x} is in no loaded segment")


def _string(read: Read, offset: int, limit: int) -> str:
    # The string ends at its NUL; what follows may not be available, so read in steps.
    collected = b""
    step = 256
    while len(collected) < limit:
        piece = read(offset + len(collected), min(step, limit - len(collected)))
        if piece is None:
            raise _UnavailableError
        end = piece.find(b"\0")
        if end >= 0:
            return (collected + piece[:end]).decode("utf-8", "surrogateescape")
        if not piece:
            break  # end of file
        collected += piece
    return collected.decode("utf-8", "surrogateescape")


# Where the loader looks when neither the binary's search paths nor ld.so.cache (which
# lives in the image and is not read here) name the directory: Debian's multiarch
# directories first, then the traditional ones.
DEFAULT_LIBRARY_DIRECTORIES = (
    "/lib/x86_64-linux-gnu",
    "/usr/lib/x86_64-linux-gnu",
    "/lib/aarch64-linux-gnu",
    "/usr/lib/aarch64-linux-gnu",
    "/lib64",
    "/usr/lib64",
    "/lib",
    "/usr/lib",
    "/usr/local/lib",
)


def candidate_paths(file: str, dependencies: ElfDependencies) -> list[list[str]]:
    """For the loader and each needed library of ``file`` (a path in the image), the
    paths it may be at, in the loader's search order."""
    origin = "/" + file.strip("/").rpartition("/")[0]
    directories = []
    for path in dependencies.search_paths:
        expanded = path.replace("${ORIGIN}", origin).replace("$ORIGIN", origin)
        if "$" not in expanded:  # $LIB, $PLATFORM: not worth guessing
            directories.append(expanded)
    directories += DEFAULT_LIBRARY_DIRECTORIES
    candidates = [[dependencies.interpreter]] if dependencies.interpreter else []
    for name in dependencies.needed:
        if "/" in name:
            candidates.append([name])
        else:
            candidates.append([f"{directory.rstrip('/')}/{name}" for directory in directories])
    return candidates
