"""Local sources (the build context): the context's files, as a layer of their own.

The files are copied once per distinct content into a local layer, owned by root as
Docker's context transfer makes them; the cache key is the content of the whole
(``.dockerignore``-filtered) context, so an unchanged context is not copied again.
COPY steps key on the files they select instead (``content_digest``).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Sequence
from contextlib import AbstractAsyncContextManager
from pathlib import Path

import trio

from lazybuild.context.listing import BuildContext, ContextError
from lazybuild.graph.ops import LocalSource
from lazybuild.solver import CacheMap, Job, Result
from lazybuild.worker.layers import LocalLayer, Snapshot
from lazybuild.worker.opbase import op_digest, slot
from lazybuild.worker.resources import WorkerResources


class LocalSourceOp:
    def __init__(self, op: LocalSource, resources: WorkerResources) -> None:
        self._op = op
        self._resources = resources

    def _context(self) -> BuildContext:
        context = self._resources.contexts.get(self._op.name)
        if context is None:
            raise ContextError(f"no local source named {self._op.name!r} was given")
        return context

    async def cache_map(self, job: Job, index: int) -> CacheMap:
        context = self._context()
        checksum = await trio.to_thread.run_sync(context.checksum, "/")
        return CacheMap(digest=op_digest(self._op, checksum))

    async def exec(self, job: Job, inputs: Sequence[Result]) -> list[Result]:
        context = self._context()
        store = self._resources.store
        with store.staging() as area:
            await trio.to_thread.run_sync(copy_context, context, area.upper)
            layer = store.commit(area)
        return [Snapshot((layer,))]

    def acquire(self) -> AbstractAsyncContextManager[None]:
        return slot(self._resources.file_slots)


async def context_content_digest(context: BuildContext, selector: str) -> str:
    return await trio.to_thread.run_sync(context.checksum, selector)


def copy_context(context: BuildContext, dest: Path) -> None:
    """Copy the context's visible files into ``dest``, root-owned, modes and mtimes kept."""
    directories: list[tuple[Path, os.stat_result]] = []
    for entry in context.files():
        source = context.root / entry.path
        target = dest / entry.path
        info = source.lstat()
        if entry.type == "dir":
            target.mkdir(exist_ok=True)
            directories.append((target, info))
            continue
        if entry.type == "symlink":
            os.symlink(entry.linkname, target)
        elif entry.type == "file":
            shutil.copyfile(source, target, follow_symlinks=False)
        elif entry.type == "socket":
            # As BuildKit's context transfer (fsutil): a socket arrives as an empty
            # regular file with the socket's permission bits.
            target.touch(exist_ok=False)
        else:
            continue  # devices and fifos are not sent by a context transfer
        os.lchown(target, 0, 0)
        if entry.type != "symlink":
            os.chmod(target, info.st_mode & 0o7777)
        os.utime(target, ns=(info.st_mtime_ns, info.st_mtime_ns), follow_symlinks=False)
    for directory, info in reversed(directories):
        os.lchown(directory, 0, 0)
        os.chmod(directory, info.st_mode & 0o7777)
        os.utime(directory, ns=(info.st_mtime_ns, info.st_mtime_ns))


def local_layer_of(snapshot: Snapshot) -> LocalLayer | None:
    """The single layer of a local source's snapshot."""
    if len(snapshot.layers) == 1 and isinstance(snapshot.layers[0], LocalLayer):
        return snapshot.layers[0]
    return None
