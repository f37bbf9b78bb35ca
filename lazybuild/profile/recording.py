"""What a workload read, for a rewrite: recorded now over a mounted image, or taken from
a record file. ``build`` (profiling its result) and ``optimize`` both go through here.

Two sources make one record: fanotify names the files, in first-access order
(``workload.record_workload``); where in a big file the workload read only the lazy
filesystem sees, between a mark set before the run and the end of it. A root
filesystem served by no lazy filesystem (an unpacked layout) has names only.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from lazybuild.executor.spec import Network
from lazybuild.profile.record import (
    ReadRanges,
    read_record,
    record_paths,
    record_read_ranges,
)
from lazybuild.profile.workload import (
    DEFAULT_TIMEOUT,
    OutputSink,
    WorkloadRecord,
    record_workload,
)

__all__ = ["ReadMarks", "RecordedReads", "WorkloadOptions", "reads_from_record", "record_reads"]


@dataclass(frozen=True)
class WorkloadOptions:
    command: tuple[str, ...] | None = None  # None: the image's entrypoint and cmd
    env: tuple[str, ...] = ()
    timeout: float = DEFAULT_TIMEOUT
    ready: re.Pattern[str] | None = None
    network: Network = "none"


class ReadMarks(Protocol):
    """The lazy filesystem serving the root filesystem, as far as a record needs it."""

    async def mark_reads(self, *, reread_big_files: bool = False) -> int | None: ...

    async def ranges_since(self, mark: int) -> dict[str, ReadRanges]: ...


@dataclass(frozen=True)
class RecordedReads:
    """The files a workload read, in first-access order, and by path the places it read
    of files too big to prefetch whole."""

    files: tuple[str, ...]
    read_ranges: dict[str, ReadRanges]
    workload: WorkloadRecord | None = None  # None: taken from a record file
    manifests: frozenset[str] = frozenset()  # the images a record file was made on


def reads_from_record(path: Path) -> RecordedReads:
    """A record file's reads (ours or ctr-remote's). Blocking."""
    entries = read_record(path)
    return RecordedReads(
        tuple(record_paths(entries)),
        record_read_ranges(entries),
        manifests=frozenset(e.manifest_digest for e in entries if e.manifest_digest),
    )


async def record_reads(
    rootfs: Path,
    config: Mapping[str, Any],
    options: WorkloadOptions,
    *,
    scratch_dir: Path,
    reads: ReadMarks | None,
    reread_big_files: bool = False,
    output: OutputSink | None = None,
) -> RecordedReads:
    """The workload of ``options`` run on the mounted ``rootfs`` (see ``record_workload``),
    with the places of big files read from ``reads`` when a lazy filesystem serves it.
    ``reread_big_files``: the kernel forgets the pages of big files it has cached first,
    for a root filesystem that was read before (a build's steps)."""
    mark = None if reads is None else await reads.mark_reads(reread_big_files=reread_big_files)
    record = await record_workload(
        rootfs,
        config,
        command=options.command,
        env=options.env,
        timeout=options.timeout,
        ready=options.ready,
        network=options.network,
        scratch_dir=scratch_dir,
        output=output,
    )
    ranges = {} if reads is None or mark is None else await reads.ranges_since(mark)
    return RecordedReads(record.files, ranges, record)
