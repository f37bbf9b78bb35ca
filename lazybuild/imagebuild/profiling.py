"""The built image's own workload, profiled so its new layers put what it reads first.

After the last stage, the image's ENTRYPOINT/CMD (or ``--workload-cmd``) runs in runc
on an overlay of the result, the files it reads are recorded by fanotify
(``lazybuild.profile``), and each file is assigned to the top-most layer that has it.
The layers the build made are then written with their files first, in access order, so
a lazy puller's prefetch brings them in one request. Base layers are left as they are:
rewriting them would break sharing and cross-repository mounts. ``--optimize-base``
rewrites them too, for images whose start-up reads mostly base files (an interpreter, a
JVM): the exporter (``exporter.baseblobs``) then writes every base layer with its share
of the record first. A workload that fails
or hangs is reported, never fatal: the image is written with what was recorded.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import trio

from lazybuild.executor.spec import Network
from lazybuild.exporter.registrypush import WorkloadRecordAttachment
from lazybuild.imagebuild.driver import BuildResult
from lazybuild.oci.platform import host_platform
from lazybuild.profile.layers import (
    DirectoryLayerContents,
    assign_to_layers,
    left_out_note,
    prefetchable,
)
from lazybuild.profile.record import (
    ReadRanges,
    encode_record,
    read_record,
    record_paths,
    record_read_ranges,
    write_record,
)
from lazybuild.profile.workload import WorkloadRecord, record_workload
from lazybuild.worker.layers import LocalLayer


@dataclass(frozen=True)
class ProfileRequest:
    command: tuple[str, ...] | None = None
    env: tuple[str, ...] = ()
    timeout: float = 10.0
    ready: re.Pattern[str] | None = None
    network: Network = "none"
    record_in: Path | None = None
    record_out: Path | None = None
    optimize_base: bool = False


@dataclass(frozen=True)
class Profile:
    """By layer id, the files each new layer puts first, in order; and the record.
    ``base_prioritized`` (with ``optimize_base``) gives, by blob digest, the files each
    base layer puts first; None leaves base layers as they are."""

    prioritized: dict[str, tuple[str, ...]]
    record: WorkloadRecordAttachment | None
    base_prioritized: dict[str, tuple[str, ...]] | None = None


async def profile_image(
    result: BuildResult, request: ProfileRequest, line: Callable[[str], None]
) -> Profile:
    """Record the image's workload and decide each new layer's first files."""
    snapshot = result.snapshot
    made = [layer for layer in snapshot.layers if isinstance(layer, LocalLayer)]
    base = snapshot.base_layers
    if not made and not (request.optimize_base and base):
        return Profile({}, None)
    files, workload, read_ranges = await _recorded_files(result, request, line)
    lowers = await result.mounter.lower_dirs(snapshot)
    contents = [DirectoryLayerContents(directory) for directory in reversed(lowers)]
    assignment = assign_to_layers(files, contents)
    if request.record_out is not None:
        write_record(request.record_out, assignment.entries(read_ranges=read_ranges))
    chosen: dict[str, tuple[str, ...]] = {}
    base_chosen: dict[str, tuple[str, ...]] | None = {} if request.optimize_base else None
    left_out: list[str] = []
    for position, layer in enumerate(snapshot.layers):
        files_here = await trio.to_thread.run_sync(
            prefetchable, assignment.per_layer[position], contents[position].size, left_out
        )
        if isinstance(layer, LocalLayer):
            chosen[layer.id] = files_here
        elif base_chosen is not None:
            # A blob listed twice serves its files from the upper copy; keep that list.
            base_chosen[layer.descriptor.digest] = files_here or base_chosen.get(
                layer.descriptor.digest, ()
            )
    first = sum(len(paths) for paths in chosen.values())
    summary = f"workload profile: {first} file(s) go first in the {len(made)} new layer(s)"
    if base_chosen is not None:
        in_base = sum(len(paths) for paths in base_chosen.values())
        summary += f", {in_base} in the {len(base)} base layer(s)"
    if left_out:
        summary += f"; {left_out_note(left_out)}"
    line(summary)
    attachment = None
    if assignment.files:
        attachment = WorkloadRecordAttachment(
            record=encode_record(assignment.entries(read_ranges=read_ranges)),
            command=workload.args if workload else (),
            outcome=workload.outcome.to_json() if workload else None,
            platform=host_platform(),
        )
    return Profile(chosen, attachment, base_chosen)


async def _recorded_files(
    result: BuildResult, request: ProfileRequest, line: Callable[[str], None]
) -> tuple[Sequence[str], WorkloadRecord | None, dict[str, ReadRanges]]:
    """The files the workload read in order, its record, and by path the places it read
    of files too big to prefetch whole."""
    if request.record_in is not None:
        entries = read_record(request.record_in)
        return record_paths(entries), None, record_read_ranges(entries)
    config = result.config.to_oci_config()
    settings = config.get("config") or {}
    if request.command is None and not (settings.get("Entrypoint") or settings.get("Cmd")):
        line("workload profile: the image has no ENTRYPOINT or CMD; nothing to profile")
        return (), None, {}
    with result.store.staging() as area:
        async with result.mounter.mounted(
            result.snapshot, area.merged, upper=area.upper, work=area.work
        ) as rootfs:
            # fanotify names the files; where in a big file the workload read, only the
            # lazy filesystem sees, and only for pages the kernel has not cached (the
            # build's own steps may have read them).
            mark = await result.mounter.mark_reads(reread_big_files=True)
            record = await record_workload(
                rootfs,
                config,
                command=request.command,
                env=request.env,
                timeout=request.timeout,
                ready=request.ready,
                network=request.network,
                scratch_dir=area.scratch,
            )
            ranges = {} if mark is None else await result.mounter.ranges_since(mark)
    verdict = "" if record.outcome.succeeded else " (not fatal: the image keeps what it read)"
    line(
        f"workload profile: {' '.join(record.args)} {record.outcome.describe()}; "
        f"it read {len(record.files)} file(s){verdict}"
    )
    return record.files, record, ranges
