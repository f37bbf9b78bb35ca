"""Small but real ELF files for the library-prefetch tests (64-bit little endian, or
32-bit big endian): an interpreter, DT_NEEDED entries, a run path, nothing else."""

from __future__ import annotations

import struct

_VADDR = 0x400000


def make_elf(
    *,
    needed: tuple[str, ...] = (),
    interpreter: str | None = None,
    runpath: str | None = None,
    wide: bool = True,
    little: bool = True,
    padding: int = 0,
) -> bytes:
    """An executable whose dynamic section sits ``padding`` bytes after its headers and
    strings (so that tests can put it in a later chunk than the ELF header)."""
    order = "<" if little else ">"
    strings = b"\0"
    offsets = []
    for name in (*needed, *([runpath] if runpath else [])):
        offsets.append(len(strings))
        strings += name.encode() + b"\0"
    interp = (interpreter.encode() + b"\0") if interpreter else b""
    header_size, phentsize = (64, 56) if wide else (52, 32)
    phnum = 3 if interpreter else 2
    interp_at = header_size + phnum * phentsize
    strings_at = interp_at + len(interp)
    dynamic_at = strings_at + len(strings) + padding
    dynamic_at += -dynamic_at % 8
    entries = [(1, offset) for offset in offsets[: len(needed)]]
    if runpath:
        entries.append((29, offsets[-1]))
    entries += [(5, _VADDR + strings_at), (0, 0)]
    entry_format = order + ("qQ" if wide else "iI")
    dynamic = b"".join(struct.pack(entry_format, tag, value) for tag, value in entries)
    size = dynamic_at + len(dynamic)

    def segment(kind: int, offset: int, filesz: int) -> bytes:
        if wide:
            return struct.pack(
                order + "IIQQQQQQ", kind, 4, offset, _VADDR + offset, 0, filesz, filesz, 8
            )
        return struct.pack(
            order + "IIIIIIII", kind, offset, _VADDR + offset, 0, filesz, filesz, 4, 4
        )

    headers = [segment(1, 0, size), segment(2, dynamic_at, len(dynamic))]
    if interpreter:
        headers.insert(0, segment(3, interp_at, len(interp)))
    ident = b"\x7fELF" + bytes([2 if wide else 1, 1 if little else 2, 1]) + bytes(9)
    if wide:
        rest = struct.pack(
            order + "HHIQQQIHHHHHH",
            2,
            62,
            1,
            _VADDR,
            header_size,
            0,
            0,
            header_size,
            phentsize,
            phnum,
            0,
            0,
            0,
        )
    else:
        rest = struct.pack(
            order + "HHIIIIIHHHHHH",
            2,
            8,
            1,
            _VADDR,
            header_size,
            0,
            0,
            header_size,
            phentsize,
            phnum,
            0,
            0,
            0,
        )
    image = ident + rest + b"".join(headers) + interp + strings
    image += bytes(dynamic_at - len(image))
    return image + dynamic
