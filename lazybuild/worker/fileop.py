"""COPY, ADD and WORKDIR: file actions applied on an overlay of the base snapshot.

The base is mounted writable over a fresh upper directory and each source read-only;
the actions run in a thread (``fileactions``) and the upper directory becomes the
layer. A COPY from the build context keys on the content of the files it selects, so
editing another file of the context does not invalidate it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from contextlib import AbstractAsyncContextManager, AsyncExitStack
from pathlib import Path

import trio

from lazybuild.context.listing import BuildContext
from lazybuild.graph.ops import Copy, File, FileAction
from lazybuild.solver import CacheDep, CacheMap, Job, Result
from lazybuild.worker.fileactions import apply_actions
from lazybuild.worker.layers import Snapshot
from lazybuild.worker.opbase import op_digest, slot
from lazybuild.worker.resources import WorkerResources


class FileOp:
    """``contexts[i]`` is the build context when input ``i`` is a local source."""

    def __init__(
        self,
        op: File,
        resources: WorkerResources,
        contexts: Sequence[BuildContext | None],
    ) -> None:
        self._op = op
        self._resources = resources
        self._contexts = contexts

    async def cache_map(self, job: Job, index: int) -> CacheMap:
        deps = [CacheDep() for _ in self._op.inputs]
        for position, context in enumerate(self._contexts):
            if context is None:
                continue
            selectors = [
                action.src
                for action in self._op.actions
                if isinstance(action, Copy) and action.src_input == position
            ]
            deps[position] = CacheDep(
                selector="\n".join(selectors),
                compute_digest=_ContextDigest(context, self._op.actions, position),
            )
        return CacheMap(digest=op_digest(self._op), deps=tuple(deps))

    def acquire(self) -> AbstractAsyncContextManager[None]:
        return slot(self._resources.file_slots)

    async def exec(self, job: Job, inputs: Sequence[Result]) -> list[Result]:
        op = self._op
        resources = self._resources
        snapshots = [snapshot for snapshot in inputs if isinstance(snapshot, Snapshot)]
        assert len(snapshots) == len(inputs)
        base = snapshots[op.base_input] if op.base_input is not None else Snapshot()
        used = {action.src_input for action in op.actions if isinstance(action, Copy)}
        with resources.store.staging() as area:
            async with AsyncExitStack() as stack:
                root = await stack.enter_async_context(
                    resources.mounter.mounted(base, area.merged, upper=area.upper, work=area.work)
                )
                sources: list[Path | None] = [None] * len(snapshots)
                for position in sorted(used):
                    sources[position] = await stack.enter_async_context(
                        resources.mounter.mounted(
                            snapshots[position], area.scratch / f"source{position}"
                        )
                    )
                await trio.to_thread.run_sync(
                    lambda: apply_actions(op.actions, dest_root=root, sources=sources)
                )
            layer = resources.store.commit(area)
        return [base.on_top([layer])]


class _ContextDigest:
    """The content key of what the op's copies select from the context."""

    def __init__(self, context: BuildContext, actions: Sequence[FileAction], position: int) -> None:
        self._context = context
        self._copies = [a for a in actions if isinstance(a, Copy) and a.src_input == position]

    async def __call__(self, result: Result) -> str:
        def compute() -> str:
            parts = []
            for copy in self._copies:
                checksum = self._context.checksum(
                    copy.src,
                    follow_symlinks=copy.follow_symlinks,
                    allow_wildcard=copy.allow_wildcard,
                    allow_empty_wildcard=copy.allow_empty_wildcard,
                )
                patterns = "|".join(copy.include_patterns) + "!" + "|".join(copy.exclude_patterns)
                parts.append(f"{copy.src}={checksum};{patterns}")
            return "\n".join(parts)

        text = await trio.to_thread.run_sync(compute)
        return "sha256:" + hashlib.sha256(text.encode()).hexdigest()
