"""An image's root filesystem, assembled from lazily mounted layers.

The layers come from one filesystem process (``lazyfs.client.LazyMountService``):
eStargz layers are served lazily through FUSE, others are unpacked locally. Kernel
overlayfs stacks them, read-only or with an upper directory. Everything is undone on
the way out, including after errors and interrupts; a crash is cleaned up by the next
command (``lazyfs.stale``).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import trio

from lazybuild.errors import LazybuildError, one_error
from lazybuild.lazyfs.client import FetchReport, LayerMount, LazyMountService
from lazybuild.lazyfs.stale import cleanup_stale_mounts
from lazybuild.lazyfs.unpack import is_lazy_layer
from lazybuild.oci.descriptor import Descriptor
from lazybuild.oci.platform import host_platform
from lazybuild.profile.published import prefetch_plan, published_record
from lazybuild.progress import transfer
from lazybuild.progress.lines import Progress, human_size, short_digest
from lazybuild.registry.client import RegistryClient, ResolvedImage
from lazybuild.registry.options import RegistryOptions
from lazybuild.registry.reference import Reference
from lazybuild.snapshot.overlay import is_mounted, mount_overlay, unmount

if TYPE_CHECKING:
    from lazybuild.oci.layout import OciLayout

log = logging.getLogger(__name__)

# How often the filesystem process is asked how its whole-layer downloads are going,
# while layers are added and a transfer board shows them.
_DOWNLOADS_POLL_SECONDS = 0.5


@dataclass
class MountedImage:
    reference: Reference | str  # pinned to the manifest digest (``oci:DIR@digest``)
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
    layout = layout_location(image)
    if service is None:
        service = LazyMountService(
            state_dir,
            insecure_registries=registry.insecure_registries,
            docker_config=registry.docker_config,
            background_fetch=background_fetch,
            # The process opens a registry image ahead; a layout's is as near as its files.
            open_image=image if prefetch_record and layout is None else None,
        )
    async with AsyncExitStack() as stack:
        if layout is not None:
            await stack.enter_async_context(service)
            pinned, config, layers = await _layout_image(layout, service, state_dir, progress)
            async with _stacked(target, service, layers, upper, work):
                yield MountedImage(pinned, config, layers, target, service)
            return
        reference = Reference.parse(image)
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
            layers = await _adding_shown(
                service,
                lambda: service.add_image(resolved.ref, list(resolved.manifest.layers)),
            )
            recorded.layers_added.set()
            _report_layers(layers, progress)
            async with _stacked(target, service, layers, upper, work):
                yield MountedImage(resolved.ref, resolved.config, layers, target, service)
        finally:
            recorded.cancel()


async def _adding_shown(
    service: LazyMountService, adding: Callable[[], Awaitable[list[LayerMount]]]
) -> list[LayerMount]:
    """``adding()`` (the image's layers being added), with the filesystem process's
    whole-layer downloads (layers that are not eStargz) shown on the command's transfer
    board while it runs, asked for every ``_DOWNLOADS_POLL_SECONDS``. Without a board
    (not a terminal, ``-q``), just ``adding()``: nothing is asked."""
    board = transfer.active()
    if board is None:
        return await adding()
    mirror = transfer.Mirror(board)

    async def poll() -> None:
        while True:
            try:
                report = await service.stats()
            except LazybuildError:
                pass  # the add says what went wrong
            else:
                in_flight = [(d.digest, d.done, d.total, d.seconds) for d in report.downloads]
                mirror.update(in_flight, finished={layer.digest for layer in report.layers})
            await trio.sleep(_DOWNLOADS_POLL_SECONDS)

    added: list[LayerMount] = []
    try:
        with one_error():
            async with trio.open_nursery() as nursery:
                nursery.start_soon(poll)
                added = await adding()
                nursery.cancel_scope.cancel()
    finally:
        mirror.close(finished={layer.digest for layer in added})
    return added


@asynccontextmanager
async def _stacked(
    target: Path,
    service: LazyMountService,
    layers: list[LayerMount],
    upper: Path | None,
    work: Path | None,
) -> AsyncIterator[None]:
    """The layers as one overlay at ``target``, unmounted on the way out."""
    target.mkdir(parents=True, exist_ok=True)
    service.register_overlay(target)
    # overlayfs wants the top-most lower first; manifests list the base first.
    lowers = [layer.path for layer in reversed(layers)]
    await trio.to_thread.run_sync(mount_overlay, target, lowers, upper, work)
    try:
        yield
    finally:
        with trio.CancelScope(shield=True):
            if is_mounted(target):
                await trio.to_thread.run_sync(lambda: unmount(target, lazy=True))
            service.unregister_overlay(target)


def layout_location(image: str) -> tuple[Path, str | None] | None:
    """``oci:DIR[:tag]`` as (directory, tag); None for a registry reference."""
    from lazybuild.image.store import parse_location

    location = parse_location(image)
    if isinstance(location, Reference):
        return None
    directory, tag = location
    return Path(directory), tag


async def _layout_image(
    location: tuple[Path, str | None],
    service: LazyMountService,
    state_dir: Path,
    progress: Progress,
) -> tuple[str, dict[str, Any], list[LayerMount]]:
    """An image of an OCI layout directory, for the host's platform: its eStargz layers
    are served lazily from the layout's blobs (every chunk verified against the TOC, as
    from a registry), the others unpacked here (the filesystem process unpacks only
    registry layers), each blob checked against its digest first."""
    from lazybuild.oci.layout import OciLayout
    from lazybuild.oci.localblob import layout_source
    from lazybuild.oci.manifest import Index, Manifest, load_config, parse_document

    directory, tag = location
    layout = await trio.to_thread.run_sync(OciLayout.open, directory)
    name = f"oci:{directory}" + (f":{tag}" if tag else "")
    descriptor = await trio.to_thread.run_sync(layout.resolve, tag)
    data = await trio.to_thread.run_sync(layout.read_blob, descriptor.digest, descriptor.size)
    document = parse_document(data, descriptor.media_type, name)
    if isinstance(document, Index):
        descriptor = document.select(host_platform(), name)
        data = await trio.to_thread.run_sync(layout.read_blob, descriptor.digest, descriptor.size)
        document = parse_document(data, descriptor.media_type, name)
    if not isinstance(document, Manifest):
        raise LazybuildError(f"{name}: {descriptor.digest} is a nested index")
    manifest = document
    config_data = await trio.to_thread.run_sync(
        layout.read_blob, manifest.config.digest, manifest.config.size
    )
    config = load_config(config_data, f"config {manifest.config.digest} of {name}")
    progress.line(
        f"resolved {name} to {short_digest(descriptor.digest)}: {len(manifest.layers)} "
        f"layer(s), {human_size(sum(layer.size for layer in manifest.layers))}"
    )
    source = layout_source(directory, descriptor.digest)
    layers: list[LayerMount | None] = [None] * len(manifest.layers)

    async def add(position: int, layer: Descriptor) -> None:
        if is_lazy_layer(layer):
            layers[position] = await service.add_layer(source, layer)
        else:
            layers[position] = await _unpack_from_layout(layout, layer, state_dir)

    # As add_image: all at once, so that unpacking and opening overlap.
    async with trio.open_nursery() as nursery:
        for position, layer in enumerate(manifest.layers):
            nursery.start_soon(add, position, layer)
    mounts = [layer for layer in layers if layer is not None]
    _report_layers(mounts, progress)
    return f"{name}@{descriptor.digest}", config, mounts


async def _unpack_from_layout(layout: OciLayout, layer: Descriptor, state_dir: Path) -> LayerMount:
    """A layer that is not lazy eStargz, unpacked where the filesystem process keeps the
    layers it unpacks (so ``du`` and ``prune`` see it), hashed as it is read, as a
    build's ``oci-layout://`` context's layers are."""
    from lazybuild.lazyfs.unpack import unpack_blob_file, unpacked_root

    root = unpacked_root(state_dir)
    root.mkdir(parents=True, exist_ok=True)
    blob = layout.blob_path(layer.digest)
    unpacked = await unpack_blob_file(blob, layer, root, f"{layout.root}: blob {layer.digest}")
    return LayerMount(path=unpacked.path, mode="unpacked", digest=layer.digest)


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
