"""Snapshots mounted as root filesystems: overlayfs over local and lazily served layers.

Base image layers come from a lazy filesystem process (``LazyMountService``), opened
the first time a snapshot with a remote layer is mounted and added to once per layer:
the build's own (``imagebuild.filesystem``), or one a daemon lends to all its builds
(``lazyfs.shared``). Local layers are used where they lie. Every mount is undone on
the way out, including on errors and cancellation.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Protocol

import trio

from lazybuild.lazyfs.client import FetchReport, LayerMount, LazyMountService
from lazybuild.oci.localblob import layout_of
from lazybuild.progress.lines import short_digest
from lazybuild.registry.reference import Reference
from lazybuild.snapshot.overlay import is_mounted, mount_overlay, unmount
from lazybuild.worker.layers import LocalLayer, RemoteLayer, Snapshot
from lazybuild.worker.layerstore import LayerStore

log = logging.getLogger(__name__)


class FilesystemSource(Protocol):
    """Where a build's lazy filesystem process comes from."""

    # Whether other builds use the process too: then this build's fetch report is its
    # share, counted from when it opened the process.
    shared: bool

    async def open(self, stack: AsyncExitStack) -> LazyMountService:
        """The running process, for as long as ``stack`` is open."""
        ...


class LayerMounter:
    """Lower directories for snapshots, and overlay mounts of them.

    ``filesystem`` gives the lazy filesystem process, kept until ``stack`` (the
    build's) closes. ``on_unpacked`` hears of base layers that are not eStargz and were
    downloaded (or read from a layout) whole (never silent).
    """

    def __init__(
        self,
        store: LayerStore,
        filesystem: FilesystemSource,
        stack: AsyncExitStack,
        on_unpacked: Callable[[str], None] = lambda message: None,
    ) -> None:
        self._store = store
        self._filesystem = filesystem
        self._stack = stack
        # What the process had fetched before this build opened it (a shared one).
        self._fetched_before: FetchReport | None = None
        self._on_unpacked = on_unpacked
        self._service: LazyMountService | None = None
        self._service_lock = trio.Lock()
        self._layers: dict[str, LayerMount] = {}
        self._sources: dict[str, str] = {}  # layer digest -> the image it came with
        self._adding: dict[str, trio.Event] = {}

    @property
    def service(self) -> LazyMountService | None:
        return self._service

    async def fetch_by_image(self, report: FetchReport | None = None) -> dict[str, tuple[int, int]]:
        """Bytes fetched so far and total size, per base image (by reference), over the
        layers mounted so far (in ``report``, else one asked for now)."""
        report = report if report is not None else await self.fetch_report()
        if report is None:
            return {}
        totals: dict[str, tuple[int, int]] = {}
        for layer in report.layers:
            image = self._sources.get(layer.digest, layer.digest)
            fetched, size = totals.get(image, (0, 0))
            totals[image] = (fetched + layer.bytes_fetched, size + layer.size)
        return totals

    def downloads_by_image(self, report: FetchReport) -> dict[str, tuple[int, int]]:
        """The whole-layer downloads under way in ``report`` (layers that are not
        eStargz, being added), per base image of this build: bytes done and total."""
        totals: dict[str, tuple[int, int]] = {}
        for download in report.downloads:
            image = self._sources.get(download.digest)
            if image is None:
                continue  # another build's, in a shared process
            done, total = totals.get(image, (0, 0))
            totals[image] = (done + download.done, total + (download.total or 0))
        return totals

    async def fetch_report(self) -> FetchReport | None:
        """What the lazy filesystem fetched so far for this build's layers (``None``: no
        base layer was mounted)."""
        if self._service is None or not self._service.running:
            return None
        report = await self._service.stats()
        if self._fetched_before is None:
            return report
        return report.since(self._fetched_before, self._layers)

    async def warm_up(self, layers: Sequence[RemoteLayer]) -> None:
        """Start the filesystem and open ``layers`` (fetch and verify their TOCs) ahead
        of the first step that mounts them. Best effort: a failure here is met again,
        and reported, by the step that needs the layer."""
        try:
            await self._started_service()
            async with trio.open_nursery() as nursery:
                for layer in layers:
                    nursery.start_soon(self._remote_dir, layer)
        except Exception as exc:
            log.debug("warming up the lazy filesystem failed: %s", exc)

    async def _started_service(self) -> LazyMountService:
        async with self._service_lock:
            if self._service is None:
                service = await self._filesystem.open(self._stack)
                if self._filesystem.shared:
                    self._fetched_before = await service.stats()
                self._service = service
            return self._service

    async def _remote_dir(self, layer: RemoteLayer) -> Path:
        digest = layer.descriptor.digest
        while digest not in self._layers:
            adding = self._adding.get(digest)
            if adding is not None:
                await adding.wait()
                continue
            self._adding[digest] = trio.Event()
            try:
                service = await self._started_service()
                source = layer.source
                layout = layout_of(source)
                named = source if layout is not None else Reference.parse(source)
                # Named before the add, so that its download (if any) is shown as the image's.
                self._sources[digest] = layer.source.split("@", 1)[0]
                mount = await service.add_layer(named, layer.descriptor)
                self._layers[digest] = mount
                if mount.mode == "unpacked":
                    how = "downloaded whole" if layout is None else "read whole and unpacked"
                    where = source if layout is None else f"the layout {layout}"
                    self._on_unpacked(
                        f"layer {short_digest(digest)} of {where} is not eStargz: {how}"
                    )
            finally:
                self._adding.pop(digest).set()
        return self._layers[digest].path

    async def lower_dirs(self, snapshot: Snapshot) -> list[Path]:
        """The snapshot's layer directories, top-most first (overlayfs's order)."""
        directories: list[Path | None] = [None] * len(snapshot.layers)

        async def resolve(position: int) -> None:
            layer = snapshot.layers[position]
            if isinstance(layer, LocalLayer):
                directories[position] = layer.path
            else:
                directories[position] = await self._remote_dir(layer)

        async with trio.open_nursery() as nursery:
            for position in range(len(snapshot.layers)):
                nursery.start_soon(resolve, position)
        lowers = [directory for directory in reversed(directories) if directory is not None]
        return lowers or [self._store.empty_directory()]

    async def prefetch_files(
        self, snapshot: Snapshot, files_by_base_layer: Sequence[Sequence[str]]
    ) -> tuple[int, int]:
        """Start fetching, for each base layer of ``snapshot`` (bottom first), the files
        listed for its position; the chunks and compressed bytes scheduled."""
        remote = snapshot.base_layers
        if len(remote) != len(files_by_base_layer):
            return 0, 0
        wanted = [
            (layer, list(paths))
            for layer, paths in zip(remote, files_by_base_layer, strict=True)
            if paths
        ]
        return await self._prefetch(wanted)

    async def prefetch_in_layers(self, layers: Sequence[RemoteLayer], paths: Sequence[str]) -> int:
        """Start fetching ``paths`` from whichever of ``layers`` (lazy lowers of a cache
        mount) hold them; the compressed bytes scheduled."""
        if not layers or not paths:
            return 0
        return (await self._prefetch([(layer, list(paths)) for layer in layers]))[1]

    async def _prefetch(self, wanted: Sequence[tuple[RemoteLayer, list[str]]]) -> tuple[int, int]:
        """The filesystem process opens the layers it has not added yet itself and
        starts as soon as each one's TOC is verified: a prefetch need not wait for the
        layer's EROFS image to be laid out and mounted."""
        if not wanted:
            return 0, 0
        service = await self._started_service()
        files = {layer.descriptor.digest: paths for layer, paths in wanted}
        sources = {
            layer.descriptor.digest: (layer.source, layer.descriptor)
            for layer, _ in wanted
            if layer.descriptor.digest not in self._layers
        }
        return await service.prefetch_files(files, layers=sources)

    async def reads_in_layers(self, layers: Sequence[RemoteLayer], mark: int) -> list[str] | None:
        """The files read from ``layers`` since ``mark``, top-most layer's first."""
        if self._service is None or not self._service.running:
            return None
        read = await self._service.reads_since(mark)
        seen: dict[str, None] = {}
        for layer in reversed(layers):
            seen.update(dict.fromkeys(read.get(layer.descriptor.digest, [])))
        return list(seen)

    async def mark_reads(self, *, reread_big_files: bool = False) -> int | None:
        """A mark for ``reads_since`` and ``ranges_since`` (None: no lazy filesystem,
        nothing to learn); see ``LazyMountService.mark_reads``."""
        if self._service is None or not self._service.running:
            return None
        return await self._service.mark_reads(reread_big_files=reread_big_files)

    async def ranges_since(self, mark: int) -> dict[str, tuple[tuple[int, int], ...]]:
        """By path, the places read since ``mark`` in big files of lazy layers."""
        if self._service is None or not self._service.running:
            return {}
        return await self._service.ranges_since(mark)

    async def reads_since(self, snapshot: Snapshot, mark: int) -> list[list[str]] | None:
        """For each base layer of ``snapshot`` (bottom first), the files read since
        ``mark``."""
        if self._service is None or not self._service.running:
            return None
        read = await self._service.reads_since(mark)
        return [read.get(layer.descriptor.digest, []) for layer in snapshot.base_layers]

    async def fetch_whole(self, snapshot: Snapshot) -> None:
        """Fetch the snapshot's lazy layers completely, in large requests: for readers
        of everything (a ``type=local`` export), where file-by-file fetching would cost
        a round trip per file."""
        await self.lower_dirs(snapshot)
        remote = [layer.key for layer in snapshot.remote_layers]
        if remote and self._service is not None:
            await self._service.fetch_all(remote)

    @asynccontextmanager
    async def mounted(
        self,
        snapshot: Snapshot,
        target: Path,
        *,
        upper: Path | None = None,
        work: Path | None = None,
    ) -> AsyncIterator[Path]:
        """``snapshot`` mounted at ``target`` (writable into ``upper`` when given)."""
        lowers = await self.lower_dirs(snapshot)
        target.mkdir(parents=True, exist_ok=True)
        service = self._service
        if service is not None:
            # A crash cleanup must take this overlay down before the FUSE mount under it.
            service.register_overlay(target)
        try:
            await trio.to_thread.run_sync(mount_overlay, target, lowers, upper, work)
            yield target
        finally:
            with trio.CancelScope(shield=True):
                if is_mounted(target):
                    await trio.to_thread.run_sync(lambda: unmount(target, lazy=True))
                if service is not None:
                    service.unregister_overlay(target)
