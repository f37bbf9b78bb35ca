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
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import trio

from lazybuild.executor.spec import Network
from lazybuild.exporter.registrypush import WorkloadRecordAttachment
from lazybuild.imagebuild.driver import BuildResult
from lazybuild.oci.platform import host_platform
from lazybuild.profile.layers import DirectoryLayerContents, left_out_note, plan_layers
from lazybuild.profile.record import encode_record, write_record
from lazybuild.profile.recording import (
    RecordedReads,
    WorkloadOptions,
    reads_from_record,
    record_reads,
)
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

    @property
    def workload(self) -> WorkloadOptions:
        return WorkloadOptions(self.command, self.env, self.timeout, self.ready, self.network)


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
    reads = await _recorded_reads(result, request, line)
    lowers = await result.mounter.lower_dirs(snapshot)
    contents = [DirectoryLayerContents(directory) for directory in reversed(lowers)]
    plan = await trio.to_thread.run_sync(plan_layers, reads.files, contents)
    entries = plan.assignment.entries(read_ranges=reads.read_ranges)
    if request.record_out is not None:
        write_record(request.record_out, entries)
    chosen: dict[str, tuple[str, ...]] = {}
    base_chosen: dict[str, tuple[str, ...]] | None = {} if request.optimize_base else None
    for layer, files_here in zip(snapshot.layers, plan.first, strict=True):
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
    if plan.left_out:
        summary += f"; {left_out_note(plan.left_out)}"
    line(summary)
    attachment = None
    if plan.assignment.files:
        workload = reads.workload
        attachment = WorkloadRecordAttachment(
            record=encode_record(entries),
            command=workload.args if workload else (),
            outcome=workload.outcome.to_json() if workload else None,
            platform=host_platform(),
        )
    return Profile(chosen, attachment, base_chosen)


async def _recorded_reads(
    result: BuildResult, request: ProfileRequest, line: Callable[[str], None]
) -> RecordedReads:
    """What the workload read (or the record file says it read)."""
    if request.record_in is not None:
        return reads_from_record(request.record_in)
    config = result.config.to_oci_config()
    settings = config.get("config") or {}
    if request.command is None and not (settings.get("Entrypoint") or settings.get("Cmd")):
        line("workload profile: the image has no ENTRYPOINT or CMD; nothing to profile")
        return RecordedReads((), {})
    with result.store.staging() as area:
        async with result.mounter.mounted(
            result.snapshot, area.merged, upper=area.upper, work=area.work
        ) as rootfs:
            # The build's own steps may have read big files already, and the lazy
            # filesystem sees only reads of pages the kernel has not cached.
            reads = await record_reads(
                rootfs,
                config,
                request.workload,
                scratch_dir=area.scratch,
                reads=result.mounter,
                reread_big_files=True,
            )
    record = reads.workload
    assert record is not None
    verdict = "" if record.outcome.succeeded else " (not fatal: the image keeps what it read)"
    line(
        f"workload profile: {' '.join(record.args)} {record.outcome.describe()}; "
        f"it read {len(record.files)} file(s){verdict}"
    )
    return reads
