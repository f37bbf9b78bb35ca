"""An image's root filesystem, assembled from lazily mounted layers.

The layers come from one filesystem process (``lazyfs.client.LazyMountService``):
eStargz layers are served lazily through FUSE, others are unpacked locally. Kernel
overlayfs stacks them, read-only or with an upper directory. Everything is undone on
the way out, including after errors and interrupts; a crash is cleaned up by the next
command (``lazyfs.stale``).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Iterable
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import trio

from lazybuild.errors import LazybuildError
from lazybuild.lazyfs.client import FetchReport, LayerMount, LazyMountService
from lazybuild.lazyfs.stale import cleanup_stale_mounts
from lazybuild.oci.platform import host_platform
from lazybuild.profile.published import prefetch_plan, published_record
from lazybuild.progress import Progress, human_size, short_digest
from lazybuild.registry.client import RegistryClient, ResolvedImage
from lazybuild.registry.reference import Reference
from lazybuild.registryoptions import RegistryOptions
from lazybuild.snapshot.overlay import is_mounted, mount_overlay, unmount

log = logging.getLogger(__name__)


@dataclass
class MountedImage:
    reference: Reference  # pinned to the manifest digest
    config: dict[str, Any]
    layers: list[LayerMount]
    rootfs: Path
    service: LazyMountService

    async def fetch_report(self) -> FetchReport:
        return await self.service.stats()


@asynccontextmanager
async def mounted_image(
    image: str,
    target: Path,
    *,
    state_dir: Path,
    registry: RegistryOptions,
    progress: Progress,
    upper: Path | None = None,
    work: Path | None = None,
    background_fetch: bool = True,
    prefetch_record: bool = False,
    service: LazyMountService | None = None,
) -> AsyncIterator[MountedImage]:
    """``image`` mounted at ``target``; with ``prefetch_record``, the files its published
    workload record lists start coming as soon as the layers are open (not waited for:
    the workload starts meanwhile, and a read of a file on its way waits for it).
    ``service`` is a filesystem process the caller spawned already (``background_fetch``
    is then its own); it is stopped on the way out like one started here."""
    cleaned = await trio.to_thread.run_sync(cleanup_stale_mounts, state_dir)
    for mountpoint in cleaned:
        progress.line(f"cleaned up a stale mount left by a killed run: {mountpoint}")
    reference = Reference.parse(image)
    if service is None:
        service = LazyMountService(
            state_dir,
            insecure_registries=registry.insecure_registries,
            docker_config=registry.docker_config,
            background_fetch=background_fetch,
            open_image=image if prefetch_record else None,
        )
    async with AsyncExitStack() as stack:
        client = await stack.enter_async_context(registry.client())
        # Starting the filesystem process (an interpreter, a mount) and resolving the
        # image (round trips to the registry) do not depend on each other.
        resolved_images: list[ResolvedImage] = []

        async def resolve() -> None:
            resolved_images.append(await client.resolve_image(reference, host_platform()))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(resolve)
            await stack.enter_async_context(service)
        (resolved,) = resolved_images
        progress.line(
            f"resolved {reference} to {short_digest(resolved.manifest_digest)}: "
            f"{len(resolved.manifest.layers)} layer(s), "
            f"{human_size(sum(layer.size for layer in resolved.manifest.layers))}"
        )
        recorded = _RecordedFiles(client, resolved, service, progress)
        if prefetch_record:
            recorded.start()
        try:
            layers = await service.add_image(resolved.ref, list(resolved.manifest.layers))
            recorded.layers_added.set()
            _report_layers(layers, progress)
            target.mkdir(parents=True, exist_ok=True)
            service.register_overlay(target)
            # overlayfs wants the top-most lower first; manifests list the base first.
            lowers = [layer.path for layer in reversed(layers)]
            await trio.to_thread.run_sync(mount_overlay, target, lowers, upper, work)
            try:
                yield MountedImage(resolved.ref, resolved.config, layers, target, service)
            finally:
                with trio.CancelScope(shield=True):
                    if is_mounted(target):
                        await trio.to_thread.run_sync(lambda: unmount(target, lazy=True))
                    service.unregister_overlay(target)
        finally:
            recorded.cancel()


class _RecordedFiles:
    """The files the image's published workload record lists, requested as soon as the
    record and the layers are there, and reported. Not waited for: the image is mounted
    and its workload started meanwhile, and a read of a file not requested yet fetches
    it. A filesystem process that opened the image ahead (``server.open_image_ahead``)
    has asked for them already, each layer's as soon as it was open; this request then
    finds them on their way, and says what the record lists and what is not cached."""

    def __init__(
        self,
        client: RegistryClient,
        resolved: ResolvedImage,
        service: LazyMountService,
        progress: Progress,
    ) -> None:
        self.layers_added = trio.Event()
        self._client = client
        self._resolved = resolved
        self._service = service
        self._progress = progress
        self._scope = trio.CancelScope()

    def start(self) -> None:
        trio.lowlevel.spawn_system_task(self._prefetch)

    def cancel(self) -> None:
        self._scope.cancel()

    async def _prefetch(self) -> None:
        """(a system task: it must not raise)"""
        with self._scope:
            try:
                record = await published_record(self._client, self._resolved)
                if not record:
                    return
                await self.layers_added.wait()
                plan = prefetch_plan(record, self._resolved)
                _, size = await self._service.prefetch_files(plan.files, plan.ranges)
            except LazybuildError as exc:  # only a hint: the workload fetches on demand
                self._progress.line(f"the image's workload record is not used: {exc}")
                return
            except Exception:
                log.warning("prefetching the workload record's files failed", exc_info=True)
                return
            self._progress.line(
                f"prefetching {sum(map(len, plan.files.values()))} file(s) the image's "
                f"workload read when it was built: {human_size(size)} not cached yet"
            )


def _report_layers(layers: Iterable[LayerMount], progress: Progress) -> None:
    unpacked = [layer for layer in layers if layer.mode == "unpacked"]
    if unpacked:
        # Never silent: these layers were downloaded whole, not lazily.
        digests = ", ".join(short_digest(layer.digest) for layer in unpacked)
        progress.line(f"{len(unpacked)} layer(s) are not eStargz, downloaded whole: {digests}")


def render_fetch_report(report: FetchReport) -> str:
    lines = ["fetch report:"]
    for layer in report.layers:
        share = layer.bytes_fetched / layer.size * 100 if layer.size else 0.0
        lines.append(
            f"  {short_digest(layer.digest)}  {layer.mode:<8}  fetched "
            f"{human_size(layer.bytes_fetched):>9} of {human_size(layer.size):>9} "
            f"({share:5.1f}%)  requests={layer.requests} cache_hits={layer.cache_hits} "
            f"time={layer.seconds:.2f}s"
        )
    total = report.size
    share = report.bytes_fetched / total * 100 if total else 0.0
    lines.append(
        f"  total: {human_size(report.bytes_fetched)} of {human_size(total)} ({share:.1f}%)"
    )
    # Reads the mount answered with EIO: the reader saw only "input/output error".
    lines.extend(f"  failed: {failure.describe()}" for failure in report.failures[:5])
    if len(report.failures) > 5:
        lines.append(f"  failed: {len(report.failures) - 5} more file(s)")
    return "\n".join(lines)
