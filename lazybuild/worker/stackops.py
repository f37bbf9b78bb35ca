"""Merge and Diff: new snapshots from the layers of others, with no file copied.

``COPY --link`` builds its files on scratch and merges them onto the stage, so the
layer does not depend on what is below it. A diff is the layers ``upper`` has on top
of ``lower``; only the case where ``lower`` is a prefix of ``upper`` is needed (and
supported): that is how every diff the Dockerfile frontend makes looks.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractAsyncContextManager

from lazybuild.errors import LazybuildError
from lazybuild.graph.ops import Diff, Merge
from lazybuild.solver import CacheMap, Job, Result
from lazybuild.worker.layers import Layer, Snapshot
from lazybuild.worker.opbase import no_slot, op_digest


class MergeOp:
    def __init__(self, op: Merge) -> None:
        self._op = op

    async def cache_map(self, job: Job, index: int) -> CacheMap:
        return CacheMap(digest=op_digest(self._op))

    async def exec(self, job: Job, inputs: Sequence[Result]) -> list[Result]:
        layers: list[Layer] = []
        for snapshot in inputs:
            assert isinstance(snapshot, Snapshot)
            layers.extend(snapshot.layers)
        return [Snapshot(tuple(layers))]

    def acquire(self) -> AbstractAsyncContextManager[None]:
        return no_slot()


class DiffOp:
    def __init__(self, op: Diff) -> None:
        self._op = op

    async def cache_map(self, job: Job, index: int) -> CacheMap:
        return CacheMap(digest=op_digest(self._op))

    async def exec(self, job: Job, inputs: Sequence[Result]) -> list[Result]:
        lower = _input(inputs, self._op.lower)
        upper = _input(inputs, self._op.upper)
        count = len(lower.layers)
        if upper.layers[:count] != lower.layers:
            raise LazybuildError("a diff of two unrelated filesystems is not supported")
        return [Snapshot(upper.layers[count:])]

    def acquire(self) -> AbstractAsyncContextManager[None]:
        return no_slot()


def _input(inputs: Sequence[Result], index: int | None) -> Snapshot:
    if index is None:
        return Snapshot()
    snapshot = inputs[index]
    assert isinstance(snapshot, Snapshot)
    return snapshot
