"""The built image's own workload, profiled so its new layers put what it reads first.

After the last stage, the image's ENTRYPOINT/CMD (or ``--workload-cmd``) runs in runc
on an overlay of the result, the files it reads are recorded by fanotify
(``lazybuild.profile``), and each file is assigned to the top-most layer that has it.
The layers the build made are then written with their files first, in access order, so
a lazy puller's prefetch brings them in one request. Base layers are left as they are:
rewriting them would break sharing and cross-repository mounts. A workload that fails
or hangs is reported, never fatal: the image is written with what was recorded.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from lazybuild.build.driver import BuildResult
from lazybuild.executor.spec import Network
from lazybuild.profile import DirectoryLayerContents, assign_to_layers, record_workload
from lazybuild.profile.record import read_record, record_paths, write_record
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


async def prioritized_files(
    result: BuildResult, request: ProfileRequest, line: Callable[[str], None]
) -> dict[str, tuple[str, ...]]:
    """For each layer the build made (by layer id), the files to put first, in order."""
    snapshot = result.snapshot
    made = [layer for layer in snapshot.layers if isinstance(layer, LocalLayer)]
    if not made:
        return {}
    files = await _recorded_files(result, request, line)
    lowers = await result.mounter.lower_dirs(snapshot)
    contents = [DirectoryLayerContents(directory) for directory in reversed(lowers)]
    assignment = assign_to_layers(files, contents)
    if request.record_out is not None:
        write_record(request.record_out, assignment.entries())
    chosen = {}
    for position, layer in enumerate(snapshot.layers):
        if isinstance(layer, LocalLayer):
            chosen[layer.id] = tuple(assignment.per_layer[position])
    first = sum(len(paths) for paths in chosen.values())
    line(f"workload profile: {first} file(s) go first in the {len(made)} new layer(s)")
    return chosen


async def _recorded_files(
    result: BuildResult, request: ProfileRequest, line: Callable[[str], None]
) -> Sequence[str]:
    if request.record_in is not None:
        return record_paths(read_record(request.record_in))
    config = result.config.to_oci_config()
    settings = config.get("config") or {}
    if request.command is None and not (settings.get("Entrypoint") or settings.get("Cmd")):
        line("workload profile: the image has no ENTRYPOINT or CMD; nothing to profile")
        return ()
    with result.store.staging() as area:
        async with result.mounter.mounted(
            result.snapshot, area.merged, upper=area.upper, work=area.work
        ) as rootfs:
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
    verdict = "" if record.outcome.succeeded else " (not fatal: the image keeps what it read)"
    line(
        f"workload profile: {' '.join(record.args)} {record.outcome.describe()}; "
        f"it read {len(record.files)} file(s){verdict}"
    )
    return record.files
