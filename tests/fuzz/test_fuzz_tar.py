"""Fuzzing tar streams: the bounded reader and the extractor, under both policies, and
``ADD``'s archives (a tar compressed or not, recognised by its bytes, then damaged).

Beyond the common invariant (a LazybuildError or success, in bounded time and memory),
the extractor must leave a canary tree next to its root exactly as it was, whatever
the bytes say, and the reader's data pieces must stay inside the entry's size.
"""

from __future__ import annotations

import bz2
import gzip
import io
import lzma
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import pytest
import zstandard
from hypothesis import given
from hypothesis import strategies as st

from lazybuild.untar.extract import Policy, archive_policy, extract, layer_policy
from lazybuild.untar.tarreader import TarReader
from lazybuild.worker.archive import extract_tar, is_tar_archive
from tests.fuzz.fuzzkit import bytes_like, holds_invariant, mutated
from tests.unit.untar.hostile import Canary

pytestmark = pytest.mark.timeout(300)

POLICIES = {
    "layer": layer_policy(frozenset({"stargz.index.json"})),
    "archive": archive_policy(None),
}


def _read(data: bytes) -> int:
    reader = TarReader(io.BytesIO(data))
    count = 0
    for entry in reader:
        for offset, piece in reader.data():
            assert offset >= 0 and offset + len(piece) <= max(entry.size, 0)
        count += 1
    return count


@given(bytes_like("tar", max_size=8192))
def test_tar_reader(data: bytes) -> None:
    holds_invariant(lambda: _read(data))


def _extract_beside_a_canary(data: bytes, policy: Policy) -> None:
    scratch = Path(tempfile.mkdtemp(prefix="lazybuild-fuzz-"))
    try:
        canary = Canary.plant(scratch / "outside")
        root = scratch / "root"
        root.mkdir()
        holds_invariant(lambda: extract(io.BytesIO(data), root, policy, "fuzz"))
        canary.assert_untouched()
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


@pytest.mark.root
@pytest.mark.parametrize("policy", sorted(POLICIES))
@given(data=bytes_like("tar", max_size=8192))
def test_extract(policy: str, data: bytes) -> None:
    _extract_beside_a_canary(data, POLICIES[policy])


COMPRESSIONS: dict[str, Callable[[bytes], bytes]] = {
    "gzip": lambda data: gzip.compress(data, mtime=0),
    "bzip2": bz2.compress,
    "xz": lambda data: lzma.compress(data, format=lzma.FORMAT_XZ),
    "zstd": lambda data: zstandard.ZstdCompressor().compress(data),
}


@st.composite
def _damaged_archive(draw: st.DrawFn) -> bytes:
    compressed = COMPRESSIONS[draw(st.sampled_from(sorted(COMPRESSIONS)))]
    data = compressed(draw(bytes_like("tar", max_size=8192)))
    return draw(st.just(data) | mutated(data, max_mutations=3))


def _add_beside_a_canary(data: bytes) -> None:
    scratch = Path(tempfile.mkdtemp(prefix="lazybuild-fuzz-"))
    try:
        canary = Canary.plant(scratch / "outside")
        archive = scratch / "archive"
        archive.write_bytes(data)
        root = scratch / "root"
        root.mkdir()
        if holds_invariant(lambda: is_tar_archive(archive)):
            holds_invariant(lambda: extract_tar(archive, root, owner=None))
        canary.assert_untouched()
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


@pytest.mark.root
@given(data=_damaged_archive())
def test_add_archive(data: bytes) -> None:
    _add_beside_a_canary(data)
