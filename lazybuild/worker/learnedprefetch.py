"""A RUN step's learned prefetch: fetch what it read last time as it starts, and learn
what it reads this time.

Two kinds of lazy inputs are learned, each under its own record (see learnedreads):

- the base image's layers under the step's root filesystem, by layer position;
- each cache mount (a Go build cache), as one list of paths in the mount: what the
  step read from the mount's imported lowers (another runner's cache) and, when the
  build exports its cache mounts, what it wrote there (a fresh runner's first build
  reads nothing lazily, but the next runner looks up exactly the entries it wrote).
  The lowers change from export to export, the paths a build looks up much less.
  Without this the go command looks up its cache entries one at a time, a round trip
  each, on the runner that imports the cache.

A record is a hint: failures here cost time, never the step.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import stat
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import trio

from lazybuild.errors import LazybuildError
from lazybuild.graph.ops import Exec
from lazybuild.progress.lines import human_size
from lazybuild.solver import Job
from lazybuild.worker.cachemounts import cache_mount_name
from lazybuild.worker.layers import RemoteLayer, Snapshot
from lazybuild.worker.learnedreads import MAX_FILES, step_key
from lazybuild.worker.resources import WorkerResources

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class _MountRecord:
    key: str
    lowers: tuple[RemoteLayer, ...]
    changes: Path  # where the step's writes to the mount land


@dataclass
class StepLearning:
    """What a started step will learn from: the global read mark and the records."""

    mark: int
    root_key: str
    root: Snapshot
    started_ns: int = field(default_factory=time.time_ns)
    mounts: list[_MountRecord] = field(default_factory=list)


@dataclass(frozen=True)
class Prefetched:
    files: int
    bytes: int


def cache_mount_key(root_key: str, name: str) -> str:
    """The record of what the step keyed ``root_key`` read from cache mount ``name``."""
    return hashlib.sha256(f"{root_key}\0cache-mount\0{name}".encode()).hexdigest()


async def prefetch_learned(op: Exec, root: Snapshot, resources: WorkerResources) -> Prefetched:
    """Start fetching what this step read last time (files and compressed bytes not
    cached yet). A hint: on failure the step fetches on demand instead."""
    learned = resources.learned
    key = step_key(op.args, op.cwd, root)
    if learned is None or key is None:
        return Prefetched(0, 0)
    totals = [0, 0]  # files, bytes scheduled

    async def base_layers() -> None:
        wanted = await trio.to_thread.run_sync(learned.load, key)
        if wanted:
            _, scheduled = await resources.mounter.prefetch_files(root, wanted)
            totals[0] += sum(len(paths) for paths in wanted)
            totals[1] += scheduled

    async def cache_mount(name: str, lowers: tuple[RemoteLayer, ...]) -> None:
        paths = await trio.to_thread.run_sync(learned.load, cache_mount_key(key, name))
        if paths and lowers:
            flat = [path for layer in paths for path in layer]
            totals[1] += await resources.mounter.prefetch_in_layers(lowers, flat)
            totals[0] += len(flat)

    async def hint(prefetch: Callable[[], Awaitable[None]]) -> None:
        try:
            await prefetch()
        except LazybuildError as exc:
            log.warning("learned prefetch failed: %s", exc)

    # All at once: each waits for its own layers' TOCs, which arrive in parallel.
    async with trio.open_nursery() as nursery:
        nursery.start_soon(hint, base_layers)
        try:
            mounts = await trio.to_thread.run_sync(_learned_cache_mounts, op, resources)
        except LazybuildError as exc:
            log.warning("learned prefetch failed: %s", exc)
            mounts = []
        for name, lowers, _ in mounts:
            nursery.start_soon(hint, functools.partial(cache_mount, name, tuple(lowers)))
    return Prefetched(totals[0], totals[1])


async def start_learning(
    job: Job,
    op: Exec,
    root: Snapshot,
    resources: WorkerResources,
    *,
    prefetched: Prefetched | None = None,
) -> StepLearning | None:
    """Mark the start of the step's reads, prefetching what it read last time unless
    that started earlier (``prefetched``); what to learn from this run (None: nothing
    to learn here)."""
    learned = resources.learned
    key = step_key(op.args, op.cwd, root)
    if learned is None or key is None:
        return None
    try:
        mark = await resources.mounter.mark_reads()
        if mark is None:
            return None
        if prefetched is None:
            prefetched = await prefetch_learned(op, root, resources)
        learning = StepLearning(mark, key, root)
        for name, lowers, changes in await trio.to_thread.run_sync(
            _learned_cache_mounts, op, resources
        ):
            learning.mounts.append(_MountRecord(cache_mount_key(key, name), lowers, changes))
        if prefetched.files:
            await job.status(
                "learned-prefetch",
                f"prefetching {prefetched.files} files read last time: "
                f"{human_size(prefetched.bytes)} not cached yet",
                prefetched.bytes,
                prefetched.bytes,
                completed=True,
            )
    except LazybuildError as exc:  # a hint: the step runs all the same
        log.warning("cannot learn what the step reads: %s", exc)
        return None
    return learning


async def learn_reads(learning: StepLearning | None, resources: WorkerResources) -> None:
    """Keep what the step read since it started (added to earlier runs' records)."""
    learned = resources.learned
    if learning is None or learned is None:
        return
    try:
        read = await resources.mounter.reads_since(learning.root, learning.mark)
        if read is not None and any(read):
            await trio.to_thread.run_sync(learned.save, learning.root_key, read)
        for record in learning.mounts:
            paths = await resources.mounter.reads_in_layers(record.lowers, learning.mark) or []
            if resources.learn_cache_mount_writes:
                written = await trio.to_thread.run_sync(
                    _written_since, record.changes, learning.started_ns
                )
                seen = set(paths)
                paths += [path for path in written if path not in seen]
            if paths:
                await trio.to_thread.run_sync(learned.save, record.key, [paths])
    except LazybuildError as exc:
        log.warning("cannot learn what the step read: %s", exc)


def _learned_cache_mounts(
    op: Exec, resources: WorkerResources
) -> list[tuple[str, tuple[RemoteLayer, ...], Path]]:
    """(name, imported lowers, where writes land) of the step's cache mounts worth
    learning about: those with lowers, and all of them when their writes count."""
    state = resources.cache_mount_state
    if state is None:
        return []
    found = []
    for mount in op.mounts:
        if mount.kind != "cache":
            continue
        name = cache_mount_name(mount)
        lowers = state.lowers(name)
        if lowers or resources.learn_cache_mount_writes:
            # With lowers the mount is an overlay whose upper holds the changes.
            changes = state.directory(name) / "upper" if lowers else state.directory(name)
            found.append((name, lowers, changes))
    return found


def _written_since(directory: Path, since_ns: int) -> list[str]:
    """Regular files below ``directory`` modified since ``since_ns``, oldest first (the
    order a similar step will want them in), at most ``MAX_FILES``."""
    found: list[tuple[int, str]] = []
    for parent, _, names in os.walk(directory):
        for name in names:
            path = os.path.join(parent, name)
            try:
                st = os.lstat(path)
            except OSError:
                continue  # removed meanwhile
            if stat.S_ISREG(st.st_mode) and st.st_mtime_ns >= since_ns:
                found.append((st.st_mtime_ns, os.path.relpath(path, directory)))
    found.sort()
    return [path for _, path in found[:MAX_FILES]]
