"""What every fuzz target checks, and the strategies that feed them.

The invariant (issue 13): a parser of outside bytes returns, or raises an error of the
project's own type (``LazybuildError``), within a time bound and a memory bound. A
bare ``ValueError``/``KeyError``/``IndexError``/``UnicodeError``/``RecursionError``,
a hang or a blow-up fails the example.

Memory is measured with ``tracemalloc`` around each call (the peak of Python
allocations, which is where the parsers keep their data); inputs are kept small, so a
peak far above the input's size means something was inflated without a bound. Time
is measured per call too; Hypothesis' ``deadline`` bounds each example on top, and
pytest-timeout ends a test that hangs for good.
"""

from __future__ import annotations

import os
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from hypothesis import strategies as st

from lazybuild.errors import LazybuildError

CORPUS = Path(__file__).resolve().parent / "corpus"
T = TypeVar("T")

# Per test (pytest-timeout): a hang ends the test instead of the run.
TEST_TIMEOUT_SECONDS = 3600 if os.environ.get("HYPOTHESIS_PROFILE") == "fuzz" else 300
# Per call: generous for a slow CI machine, far below "hangs".
TIME_BOUND_SECONDS = 5.0
# Per call: the inputs are at most tens of KiB; the largest legitimate output of any
# target (an inflated member) is bounded by the input sizes the strategies draw.
MEMORY_BOUND_BYTES = 96 << 20


def seeds(target: str) -> list[bytes]:
    """The seed corpus of ``target``: every file in ``corpus/<target>/``, sorted by name."""
    directory = CORPUS / target
    return [path.read_bytes() for path in sorted(directory.iterdir()) if path.is_file()]


def seed(target: str, name: str) -> bytes:
    return (CORPUS / target / name).read_bytes()


def holds_invariant(
    call: Callable[[], T],
    *,
    allowed: tuple[type[BaseException], ...] = (LazybuildError,),
    memory_bound: int = MEMORY_BOUND_BYTES,
    time_bound: float = TIME_BOUND_SECONDS,
) -> T | None:
    """Run ``call``; its result, or None when it raised one of ``allowed``. Anything
    else it raises propagates (and fails the example), as does a blown bound."""
    tracemalloc.start()
    started = time.perf_counter()
    try:
        return call()
    except allowed:
        return None
    finally:
        elapsed = time.perf_counter() - started
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        assert elapsed < time_bound, f"took {elapsed:.1f} s (bound {time_bound} s)"
        assert peak < memory_bound, f"peak of {peak >> 20} MiB (bound {memory_bound >> 20} MiB)"


_INTERESTING = [
    b"\0",
    b"\xff",
    b"0",
    b"9",
    b" ",
    b"\n",
    b"\r\n",
    b"-",
    b"=",
    b"\\",
    b'"',
    b"{",
    b"[",
    b"]",
    b"}",
    b"\xc3",
    b"\xed\xa0\x80",
    b"99999999999999999999999",
    b"-1",
]


@st.composite
def mutated(draw: st.DrawFn, base: bytes, max_mutations: int = 6) -> bytes:
    """``base`` after a few structured mutations: bytes flipped, set to interesting
    values, ranges deleted, duplicated or moved, bytes inserted, the end cut off."""
    data = bytearray(base)
    for _ in range(draw(st.integers(1, max_mutations))):
        kind = draw(st.sampled_from(["flip", "set", "insert", "delete", "dup", "cut", "splice"]))
        size = len(data)
        position = draw(st.integers(0, size)) if size else 0
        if kind == "flip" and position < size:
            data[position] ^= 1 << draw(st.integers(0, 7))
        elif kind == "set" and position < size:
            data[position] = draw(st.integers(0, 255))
        elif kind == "insert":
            data[position:position] = draw(st.sampled_from(_INTERESTING) | st.binary(max_size=16))
        elif kind == "delete":
            data[position : position + draw(st.integers(1, 64))] = b""
        elif kind == "dup":
            length = draw(st.integers(1, 256))
            data[position:position] = data[position : position + length]
        elif kind == "cut":
            del data[position:]
        elif kind == "splice" and size:
            start = draw(st.integers(0, size - 1))
            piece = data[start : start + draw(st.integers(1, 128))]
            data[position : position + len(piece)] = piece
    return bytes(data)


def bytes_like(target: str, max_size: int = 4096) -> st.SearchStrategy[bytes]:
    """Arbitrary bytes, or a seed of ``target`` mutated, or a seed as it is."""
    corpus = seeds(target)
    return st.one_of(
        st.binary(max_size=max_size),
        st.sampled_from(corpus).flatmap(mutated),
        st.sampled_from(corpus),
    )


def text_like(target: str, max_size: int = 2048) -> st.SearchStrategy[str]:
    """Arbitrary text, or a seed mutated and decoded as far as it decodes."""
    return st.one_of(
        st.text(max_size=max_size),
        bytes_like(target, max_size).map(lambda b: b.decode("utf-8", "replace")),
    )
