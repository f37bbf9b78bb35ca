"""Fuzzing tar streams: the bounded reader and the extractor, under both policies.

Beyond the common invariant (a LazybuildError or success, in bounded time and memory),
the extractor must leave a canary tree next to its root exactly as it was, whatever
the bytes say, and the reader's data pieces must stay inside the entry's size.
"""

from __future__ import annotations

import io
import shutil
import tempfile
from pathlib import Path

import pytest
from hypothesis import given

from lazybuild.untar.extract import Policy, archive_policy, extract, layer_policy
from lazybuild.untar.tarreader import TarReader
from tests.fuzz.fuzzkit import bytes_like, holds_invariant
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
