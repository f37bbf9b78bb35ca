"""``optimize``'s workload: the source image mounted where it can run, and recorded.

A registry image is mounted lazily (``run.imagemount``: eStargz layers served on
demand, the others unpacked whole), so the lazy filesystem also sees where in big files
the workload read. An OCI layout is unpacked from its layers' tars into an overlay of
its own. Either way the root filesystem is a workspace under ``<state>/containers``
that stale-mount cleanup knows, so a killed run leaves nothing the next command does
not remove.
"""

from __future__ import annotations

import contextlib
import secrets
import shutil
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import trio

from lazybuild.image.store import ImageSource, RegistrySource
from lazybuild.lazyfs.client import LazyMountService
from lazybuild.lazyfs.stale import local_overlays_recorded, register_overlay
from lazybuild.lazyfs.unpack import extract_tar_file
from lazybuild.profile.recording import RecordedReads, WorkloadOptions, record_reads
from lazybuild.profile.workload import OutputSink, WorkloadRecord
from lazybuild.progress.lines import Progress
from lazybuild.registry.options import RegistryOptions
from lazybuild.run.imagemount import mounted_image
from lazybuild.snapshot.overlay import is_mounted, mount_overlay, unmount

__all__ = ["record_source_workload"]

LayerTar = tuple[Path | None, str]
"""A layer's uncompressed tar (None: not downloaded) and how messages name the layer."""


async def record_source_workload(
    source: ImageSource,
    manifest_digest: str,
    config: dict[str, Any],
    layer_tars: Sequence[LayerTar],
    options: WorkloadOptions,
    *,
    state_dir: Path,
    registry: RegistryOptions,
    progress: Progress,
    output: OutputSink | None,
) -> RecordedReads:
    """What the workload of the image ``manifest_digest`` read. ``layer_tars``, bottom
    first, are what a source outside a registry is unpacked from (all of them there)."""
    workspace = state_dir / "containers" / ("lazybuild-optimize-" + secrets.token_hex(6))
    rootfs, upper, work = (workspace / name for name in ("rootfs", "upper", "work"))
    for directory in (rootfs, upper, work):
        directory.mkdir(parents=True)
    mounting: contextlib.AbstractAsyncContextManager[tuple[dict[str, Any], LazyMountService | None]]
    if isinstance(source, RegistrySource):
        pinned = str(source.ref.with_digest(manifest_digest))
        mounting = _lazily_mounted(pinned, workspace, state_dir, registry, progress)
    else:
        mounting = _unpacked(layer_tars, config, workspace, state_dir, progress)
    try:
        async with mounting as (image_config, service):
            what = " ".join(options.command) if options.command else "the image's command"
            progress.line(
                f"workload: running {what} (timeout {options.timeout:g}s, "
                f"network {options.network}"
                + (f", until output matches {options.ready.pattern!r}" if options.ready else "")
                + ")"
            )
            reads = await record_reads(
                rootfs,
                image_config,
                options,
                scratch_dir=workspace / "scratch",
                reads=service,
                output=output,
            )
    finally:
        with trio.CancelScope(shield=True):
            await trio.to_thread.run_sync(_remove_workspace, workspace)
    assert reads.workload is not None
    _report(reads.workload, progress)
    return reads


@asynccontextmanager
async def _lazily_mounted(
    reference: str, workspace: Path, state_dir: Path, registry: RegistryOptions, progress: Progress
) -> AsyncIterator[tuple[dict[str, Any], LazyMountService | None]]:
    """The registry image at ``workspace/rootfs``, writable (into ``upper``), and the
    lazy filesystem serving it."""
    async with mounted_image(
        reference,
        workspace / "rootfs",
        state_dir=state_dir,
        registry=registry,
        progress=progress,
        upper=workspace / "upper",
        work=workspace / "work",
        background_fetch=False,
    ) as mounted:
        yield mounted.config, mounted.service


@asynccontextmanager
async def _unpacked(
    layer_tars: Sequence[LayerTar],
    config: dict[str, Any],
    workspace: Path,
    state_dir: Path,
    progress: Progress,
) -> AsyncIterator[tuple[dict[str, Any], LazyMountService | None]]:
    """The layers unpacked and stacked at ``workspace/rootfs``, writable (into
    ``upper``); no lazy filesystem serves them."""
    rootfs, upper, work = (workspace / name for name in ("rootfs", "upper", "work"))
    lowers = []
    for position, (tar, where) in enumerate(layer_tars):
        assert tar is not None
        lower = workspace / "lowers" / str(position)
        lower.mkdir(parents=True)
        await trio.to_thread.run_sync(extract_tar_file, tar, lower, where)
        lowers.append(lower)
    progress.line(f"unpacked {len(lowers)} layer(s) to run the workload")
    with local_overlays_recorded(state_dir, workspace.name):
        register_overlay(state_dir, workspace.name, rootfs)
        await trio.to_thread.run_sync(mount_overlay, rootfs, lowers[::-1], upper, work)
        try:
            yield config, None
        finally:
            with trio.CancelScope(shield=True):
                if is_mounted(rootfs):
                    await trio.to_thread.run_sync(lambda: unmount(rootfs, lazy=True))


def _report(record: WorkloadRecord, progress: Progress) -> None:
    outcome = record.outcome
    files = f"{len(record.files)} file(s) read"
    if outcome.succeeded:
        progress.line(f"workload {outcome.describe()}: {files}")
    else:
        progress.line(
            f"warning: workload {outcome.describe()}; the image is written with what it "
            f"read until then: {files}"
        )
    if record.lost_events:
        progress.line("warning: the kernel dropped file access events; the record may miss files")


def _remove_workspace(workspace: Path) -> None:
    # Never delete through a live mount (that would write whiteouts into it); stale
    # mount cleanup takes a workspace whose root filesystem is somehow still mounted.
    if is_mounted(workspace / "rootfs"):
        return
    with contextlib.suppress(FileNotFoundError):
        shutil.rmtree(workspace)
