"""A build's last part, while its mounts are still up: profile the image's workload,
export the image to its outputs, export the build cache. One implementation for every
caller of ``run_build`` that exports (the CLI, the daemon): a ``Finish`` made from an
``ExportPlan``."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

from lazybuild.estargz.writer import WriterOptions
from lazybuild.exporter import BuiltImage, ExportResult, export_image
from lazybuild.exporter.outputs import LocalOutput, OutputSpec, TarOutput
from lazybuild.imagebuild.driver import BuildResult, Finish
from lazybuild.imagebuild.profiling import Profile, ProfileRequest, profile_image
from lazybuild.registry.options import RegistryOptions
from lazybuild.remotecache.records import select_for_export
from lazybuild.remotecache.registrycache import export_cache
from lazybuild.remotecache.spec import CacheExport


@dataclass(frozen=True)
class ExportPlan:
    """Where the result goes. ``profile_workload``: run the image's workload to order its
    layers (never for local directory outputs alone, which have no layers); ``assemble``:
    make the image (config and manifest) even when no output needs one (``--iidfile``)."""

    outputs: Sequence[OutputSpec]
    cache_exports: Sequence[CacheExport]
    profile: ProfileRequest
    profile_workload: bool
    source_date_epoch: int | None
    assemble: bool
    registry: RegistryOptions
    # --annotation: the image manifest's annotations.
    annotations: Mapping[str, str] = field(default_factory=dict)


def exporting_finish(
    plan: ExportPlan, progress: Callable[[str], None], results: list[ExportResult]
) -> Finish:
    """The ``finish`` for ``run_build`` that carries out ``plan``; the image export's
    result is appended to ``results``. A plan without outputs is said at once, before
    the build starts."""
    if not plan.outputs:
        progress(
            "no output specified: the result stays in the build cache (use -o, --push or --load)"
        )

    async def finish(result: BuildResult) -> None:
        profiled = Profile({}, None)
        if plan.profile_workload and any(
            not isinstance(o, LocalOutput | TarOutput) for o in plan.outputs
        ):
            profiled = await profile_image(result, plan.profile, progress)

        @asynccontextmanager
        async def rootfs() -> AsyncIterator[Path]:
            await result.mounter.fetch_whole(result.snapshot)
            with result.store.staging() as area:
                async with result.mounter.mounted(result.snapshot, area.merged) as path:
                    yield path

        async with plan.registry.client() as client:
            results.append(
                await export_image(
                    BuiltImage(
                        result.snapshot.layers,
                        result.config,
                        source_date_epoch=plan.source_date_epoch,
                        prioritized=profiled.prioritized,
                        record=profiled.record,
                        base_prioritized=profiled.base_prioritized,
                        annotations=plan.annotations,
                    ),
                    plan.outputs,
                    store=result.store,
                    registry=client,
                    rootfs=rootfs,
                    writer_options=WriterOptions(),
                    progress=progress,
                    assemble=plan.assemble,
                )
            )
            for export in plan.cache_exports:
                await export_cache(
                    select_for_export(result.cache_records, export.mode, result.snapshot),
                    export,
                    store=result.store,
                    registry=client,
                    writer_options=WriterOptions(),
                    prioritized=profiled.prioritized,
                    source_date_epoch=plan.source_date_epoch,
                    progress=progress,
                    learned=result.learned_reads,
                    mounts=result.cache_mounts,
                    mounter=result.mounter,
                )

    return finish
