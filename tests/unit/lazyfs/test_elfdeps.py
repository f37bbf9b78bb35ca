"""Reading the loader and libraries an ELF file names, from whatever bytes are at hand."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from lazybuild.lazyfs.elfdeps import ElfDependencies, candidate_paths, elf_dependencies
from tests.unit.lazyfs.elf_samples import make_elf


def reader(data: bytes, available: int | None = None) -> Callable[[int, int], bytes | None]:
    def read(offset: int, size: int) -> bytes | None:
        if available is not None and offset + min(size, len(data) - offset) > available:
            return None
        return data[offset : offset + size]

    return read


@pytest.mark.parametrize(("wide", "little"), [(True, True), (False, False)])
def test_loader_libraries_and_run_path(*, wide: bool, little: bool) -> None:
    data = make_elf(
        needed=("libfoo.so.1", "libc.so.6"),
        interpreter="/lib64/ld-linux-x86-64.so.2",
        runpath="$ORIGIN/../lib:/opt/lib",
        wide=wide,
        little=little,
    )
    assert elf_dependencies(reader(data)) == ElfDependencies(
        interpreter="/lib64/ld-linux-x86-64.so.2",
        needed=("libfoo.so.1", "libc.so.6"),
        search_paths=("$ORIGIN/../lib", "/opt/lib"),
    )


def test_not_known_until_the_dynamic_section_is_at_hand() -> None:
    data = make_elf(needed=("libfoo.so.1",), padding=10_000)
    assert elf_dependencies(reader(data, available=8192)) is None
    complete = elf_dependencies(reader(data))
    assert complete is not None and complete.needed == ("libfoo.so.1",)


def test_a_static_program_needs_nothing() -> None:
    data = make_elf()
    assert elf_dependencies(reader(data)) == ElfDependencies(None, (), ())


@pytest.mark.parametrize(
    "data", [b"#!/bin/sh\necho hi\n", b"\x7fELF\x09\x01" + bytes(58), make_elf(needed=("x",))[:70]]
)
def test_what_is_not_usable_elf_is_refused(data: bytes) -> None:
    with pytest.raises(ValueError):
        elf_dependencies(reader(data))


def test_candidate_paths_follow_the_loaders_search_order() -> None:
    dependencies = ElfDependencies(
        interpreter="/lib64/ld-linux-x86-64.so.2",
        needed=("libfoo.so.1", "/opt/exact/libbar.so"),
        search_paths=("$ORIGIN/../lib", "$LIB/skipped"),
    )
    loader, foo, bar = candidate_paths("usr/local/bin/tool", dependencies)
    assert loader == ["/lib64/ld-linux-x86-64.so.2"]
    assert foo[:3] == [
        "/usr/local/bin/../lib/libfoo.so.1",
        "/lib/x86_64-linux-gnu/libfoo.so.1",
        "/usr/lib/x86_64-linux-gnu/libfoo.so.1",
    ]
    assert not any("$LIB" in path for path in foo)
    assert bar == ["/opt/exact/libbar.so"]
