"""The filesystem process's mount and control server: one FUSE mount for all layers,
driven over a unix control socket (see ``service`` for the process around it,
``control`` for the protocol)."""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import signal
import threading
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import pyfuse3
import trio

from lazybuild.cache.chunkcache import ChunkCache
from lazybuild.erofs import ErofsLayout, UnrepresentableError
from lazybuild.errors import LazybuildError, one_error, reported_error
from lazybuild.estargz.toc import PREFETCH_FILE_MAX_BYTES
from lazybuild.lazyfs import control
from lazybuild.lazyfs.erofsmount import ErofsMount, mount_erofs, unmount_erofs
from lazybuild.lazyfs.fuse import AccessLog, LazyFilesystem, image_file_name
from lazybuild.lazyfs.imagecache import layout_for
from lazybuild.lazyfs.layer import LazyLayer
from lazybuild.lazyfs.layerset import LayerSet
from lazybuild.lazyfs.pagesread import resident_ranges
from lazybuild.lazyfs.priority import ForegroundGate
from lazybuild.lazyfs.readrecorder import ReadRecorder
from lazybuild.lazyfs.service import ImageAhead, ServiceOptions
from lazybuild.lazyfs.unpack import (
    UnpackedLayer,
    is_lazy_layer,
    unpack_blob_file,
    unpack_layer,
    unpacked_root,
)
from lazybuild.lazyfs.whole_images import find_whole_image, write_whole_image
from lazybuild.oci.descriptor import Descriptor
from lazybuild.oci.layout import OciLayout
from lazybuild.oci.localblob import LocalBlob, layout_of
from lazybuild.oci.mediatypes import TOC_DIGEST_ANNOTATION
from lazybuild.profile.published import PrefetchPlan, prefetch_plan, published_record
from lazybuild.progress import transfer
from lazybuild.registry.blob import RandomAccessBlob
from lazybuild.registry.client import RegistryClient
from lazybuild.registry.reference import Reference

log = logging.getLogger("lazybuild.lazyfs.service")

MOUNT_OPTIONS = frozenset({"fsname=lazybuild", "allow_other", "default_permissions", "ro"})
OWNER_POLL_SECONDS = 1.0


@dataclass(frozen=True)
class _Mounted:
    added: control.LayerAdded
    layer: LazyLayer | None
    unpacked: UnpackedLayer | None
    layout: ErofsLayout | None = None  # of a lazy layer: the image served
    whole: dict[str, Any] | None = None  # the stats of a layer mounted from its whole image


class LayerSource:
    """Opens layers for add_layer requests: eStargz lazily, as an EROFS image file of the
    mount that the kernel mounts at the layer's path (``fuse``, ``erofsmount``), or, once
    all its chunks are local, from its whole image file (``whole_images``); others, and
    eStargz layers an EROFS image cannot hold, downloaded and unpacked.

    Concurrent requests for one digest share the work; a layer is added once.
    """

    def __init__(
        self,
        *,
        filesystem: LazyFilesystem,
        mountpoint: Path,
        state_dir: Path,
        client: RegistryClient,
        cache: ChunkCache,
        gate: ForegroundGate,
        nursery: trio.Nursery,
        background_fetch: bool,
        whole_images: bool = True,
        complete_reused_layers: bool = False,
    ) -> None:
        self._filesystem = filesystem
        self._mountpoint = mountpoint
        self._state_dir = state_dir
        self._client = client
        self._cache = cache
        self._gate = gate
        self._nursery = nursery  # the layers' background work runs here, and ends with it
        self._background_fetch = background_fetch
        self._whole_images = whole_images
        self._complete_reused_layers = complete_reused_layers
        self._mounted: dict[str, _Mounted] = {}
        self._pending: dict[str, trio.Event] = {}
        # Layers being added whose verified index is ready: a prefetch needs no more, so
        # it does not wait for the EROFS layout and mount. Each pending add's event is
        # set once its index is (or once the add ended, however it ended).
        self._indexed: dict[str, LazyLayer] = {}
        self._index_ready: dict[str, trio.Event] = {}
        self._layers = LayerSet()
        # Layers served as EROFS images: layer name -> (its mount, the layer; None for a
        # whole image, which is not served from here).
        self._erofs_mounts: dict[str, tuple[ErofsMount, LazyLayer | None]] = {}
        # The big files of whole-image layers whose pages were dropped, for
        # ``note_big_file_reads``.
        self._big_files_dropped: list[_BigFile] = []
        # Whole-layer downloads under way (layers being unpacked), for ``stats``: the
        # registry client reports its whole-blob downloads to it (a list and a lock).
        self._downloads = transfer.TransferBoard()

    async def add(self, ref_text: str, descriptor_json: dict[str, Any]) -> control.LayerAdded:
        """Add a layer of the image ``ref_text``: a registry reference, or an OCI layout
        directory (``oci.localblob``: a build cache exported to a local directory)."""
        layout = layout_of(ref_text)
        ref: Reference | Path = layout if layout is not None else Reference.parse(ref_text)
        descriptor = Descriptor.from_json(descriptor_json, "add_layer descriptor")
        digest = descriptor.digest
        while digest not in self._mounted:
            pending = self._pending.get(digest)
            if pending is None:
                done = self._pending[digest] = trio.Event()
                self._index_ready.setdefault(digest, trio.Event())
                try:
                    # Whole-blob downloads (an unpacked layer's) report to the board.
                    with transfer.reporting(self._downloads):
                        self._mounted[digest] = await self._open(ref, ref_text, descriptor)
                finally:
                    del self._pending[digest]
                    self._indexed.pop(digest, None)
                    self._index_ready.pop(digest).set()
                    done.set()
            else:
                await pending.wait()  # then retry: the other request may have failed
        mounted = self._mounted[digest]
        if mounted.layer is not None:
            self._layers.add(mounted.layer, ref_text)  # one layer, used by several images
        return mounted.added

    async def fetch_all(self, digests: Sequence[str]) -> None:
        """Fetch the named lazy layers whole (unpacked layers are local already)."""
        # A layer that cannot be had fails the request with its own error, not a group.
        with one_error():
            async with trio.open_nursery() as nursery:
                for digest in digests:
                    mounted = self._mounted.get(digest)
                    if mounted is None:
                        raise LazybuildError(f"fetch_all: layer {digest} was not added")
                    if mounted.layer is not None and mounted.layout is not None:
                        nursery.start_soon(self._fetch_whole, mounted.layer, mounted.layout)

    async def prefetch_files(
        self,
        files: dict[str, list[str]],
        ranges: control.LayerRanges,
        layers: Mapping[str, control.AddLayer] | None = None,
    ) -> tuple[int, int]:
        """Start fetching these files of lazy layers, big ones in the ``ranges`` given for
        them; the chunks and bytes scheduled. A layer not added yet is opened first when
        ``layers`` says where it is (else skipped, as unpacked layers are: nothing to
        fetch); one being added is prefetched as soon as its index is verified, before
        its EROFS image is laid out and mounted."""
        for digest, where in (layers or {}).items():
            if digest in files and digest not in self._mounted and digest not in self._pending:
                # Expected now, so the wait below does not miss an add not yet begun.
                self._index_ready.setdefault(digest, trio.Event())
                self._nursery.start_soon(self._add_for_prefetch, digest, where)
        chunks = size = 0
        for digest, paths in files.items():
            layer = await self._prefetchable(digest)
            if layer is not None:
                scheduled, scheduled_bytes = await layer.prefetch_files(
                    paths, ranges.get(digest, {})
                )
                chunks, size = chunks + scheduled, size + scheduled_bytes
        return chunks, size

    async def _add_for_prefetch(self, digest: str, where: control.AddLayer) -> None:
        try:
            await self.add(where.ref, where.descriptor)
        except Exception as exc:  # a hint: the owner's own add_layer reports it
            log.info("opening a layer to prefetch from failed: %s", exc)
        finally:
            # However the add went (a descriptor of another digest, a failure before it
            # began), no prefetch waits for this digest past it.
            if digest not in self._pending:
                ready = self._index_ready.pop(digest, None)
                if ready is not None:
                    ready.set()

    async def _prefetchable(self, digest: str) -> LazyLayer | None:
        """The lazy layer ``digest`` once its index is verified; None for a layer that
        is not lazy, not known, or failed to open."""
        ready = self._index_ready.get(digest)
        if ready is not None:
            await ready.wait()
            layer = self._indexed.get(digest)
            if layer is not None:
                return layer
        mounted = self._mounted.get(digest)
        return mounted.layer if mounted is not None else None

    async def forget_big_file_pages(self) -> None:
        """Make the kernel read big files through the filesystem again, so that the read
        recorder sees every place read of them; for layers mounted from whole images,
        which it never sees, ``note_big_file_reads`` finds those places afterwards."""
        if self._erofs_mounts:
            # The kernel keeps those files' pages in the EROFS mounts (the image file
            # itself is read with direct I/O, so it has none).
            mounts = list(self._erofs_mounts.items())
            self._big_files_dropped = await trio.to_thread.run_sync(_drop_big_file_pages, mounts)

    async def note_big_file_reads(self, note: AccessLog) -> None:
        """Tell ``note`` where big files of layers mounted from whole images were read
        since ``forget_big_file_pages``: the pages of them the kernel holds again."""
        dropped, self._big_files_dropped = self._big_files_dropped, []
        if dropped:
            await trio.to_thread.run_sync(_note_resident_pages, dropped, note)

    def unmount_images(self) -> None:
        """Take the EROFS mounts down (lazily), before the FUSE mount under them."""
        for mount, _ in self._erofs_mounts.values():
            unmount_erofs(mount)
        self._erofs_mounts.clear()

    def stats(self) -> list[dict[str, Any]]:
        report = []
        for mounted in self._mounted.values():
            if mounted.layer is not None:
                report.append({"mode": "lazy", **mounted.layer.stats.to_json()})
            elif mounted.whole is not None:
                report.append(mounted.whole)
            elif mounted.unpacked is not None:
                report.append(_unpacked_stats(mounted.unpacked))
        return report

    def downloads(self) -> list[dict[str, Any]]:
        """The whole-layer downloads under way: digest, bytes done, total, seconds."""
        now = self._downloads.clock()
        return [
            {
                "digest": download.digest,
                "done": download.done,
                "total": download.total,
                "seconds": round(now - download.started, 3),
            }
            for download in list(self._downloads.transfers)
        ]

    async def _open(self, ref: Reference | Path, image: str, descriptor: Descriptor) -> _Mounted:
        digest_hex = descriptor.digest.partition(":")[2]
        if not is_lazy_layer(descriptor):
            return await self._unpack(ref, descriptor)
        if self._whole_images:
            whole = await self._open_whole(digest_hex, descriptor)
            if whole is not None:
                return whole
        blob: RandomAccessBlob = (
            self._client.open_blob(ref, descriptor)
            if isinstance(ref, Reference)
            else LocalBlob(OciLayout(ref).blob_path(descriptor.digest), descriptor.size)
        )
        async with self._gate.foreground():
            layer = await LazyLayer.open(
                blob,
                descriptor,
                self._cache,
                state_dir=self._state_dir,
                layers=self._layers,
                nursery=self._nursery,
                foreground=self._gate.foreground,
            )
        self._indexed[descriptor.digest] = layer
        ready = self._index_ready.get(descriptor.digest)
        if ready is not None:
            ready.set()
        try:
            layout = await self._layout(layer)
            path = None if layout is None else await self._present(digest_hex, layer, layout)
        except BaseException:
            self._indexed.pop(descriptor.digest, None)
            await _close(layer)
            raise
        if layout is None or path is None:
            self._indexed.pop(descriptor.digest, None)
            await _close(layer)  # not served: its early region would go on downloading
            return await self._unpack(ref, descriptor)
        self._layers.add(layer, image)
        try:
            async with self._gate.foreground():
                await layer.prefetch()
        except LazybuildError as exc:
            # Not fatal: the files are fetched on demand instead.
            log.warning("layer %s: prefetch failed: %s", descriptor.digest, exc)
        except BaseException:
            self._withdraw(digest_hex)  # so that a retry can add it again
            self._layers.discard(layer)
            self._indexed.pop(descriptor.digest, None)
            await _close(layer)
            raise
        if self._background_fetch or (
            # A layer in use again is worth having whole: after this fetch, the next
            # commands mount its whole image (a second-use admission: a base image
            # used once costs only what was read of it).
            self._complete_reused_layers and self._whole_images and layer.opened_before
        ):
            layer.start_background_fetch(self._gate, then=self._keep_whole_soon(layer, layout))
        added = control.LayerAdded(path=str(path), mode="lazy", digest=descriptor.digest)
        return _Mounted(added, layer, None, layout)

    async def _layout(self, layer: LazyLayer) -> ErofsLayout | None:
        """The EROFS image of an opened lazy layer; None for one EROFS cannot hold."""
        toc_digest = layer.descriptor.annotations.get(TOC_DIGEST_ANNOTATION)
        try:
            return await trio.to_thread.run_sync(
                layout_for, self._state_dir, layer.index, toc_digest
            )
        except UnrepresentableError as exc:
            log.warning(
                "layer %s cannot be an EROFS image (%s): downloading and unpacking it",
                layer.digest,
                exc,
            )
            return None

    async def _present(self, name: str, layer: LazyLayer, layout: ErofsLayout) -> Path:
        """Show an opened lazy layer at ``<mountpoint>/<name>``: its EROFS image, served
        as ``<name>.erofs``, mounted there."""
        target = self._mountpoint / name
        started = time.perf_counter()
        self._filesystem.add_image(name, layout, layer)
        await self._mount_image(name, target, layer)
        log.info(
            "layer %s: EROFS image of %d bytes (%d of metadata) mounted in %.3fs",
            layer.digest,
            layout.image_size,
            layout.data_start,
            time.perf_counter() - started,
        )
        return target

    async def _mount_image(self, name: str, target: Path, layer: LazyLayer) -> None:
        image = self._mountpoint / image_file_name(name)
        try:
            # In a thread: the kernel reads the superblock through this process. Left
            # behind when cancelled: once the process stops serving FUSE (shutting down),
            # the mount waits for an answer until the FUSE mount goes, then fails; one
            # that got through is below the FUSE mount, and goes with it.
            mount = await trio.to_thread.run_sync(
                mount_erofs, image, target, abandon_on_cancel=True
            )
        except LazybuildError:
            self._filesystem.remove_image(name)
            raise
        except OSError as exc:
            self._filesystem.remove_image(name)
            raise LazybuildError(
                f"layer {layer.digest}: mounting its EROFS image failed: {exc}"
            ) from exc
        except BaseException:
            self._filesystem.remove_image(name)
            raise
        self._erofs_mounts[name] = (mount, layer)
        log.debug("layer %s: EROFS mounted from %s", layer.digest, mount.source)

    async def _open_whole(self, name: str, descriptor: Descriptor) -> _Mounted | None:
        """The layer mounted from its local whole image; None when it has none (or the
        image would not mount: then it is served lazily)."""
        toc_digest = descriptor.annotations.get(TOC_DIGEST_ANNOTATION)
        image = await trio.to_thread.run_sync(find_whole_image, self._state_dir, toc_digest)
        if image is None:
            return None
        target = self._mountpoint / name
        started = time.perf_counter()
        self._filesystem.add_mount_point(name)
        try:
            mount = await trio.to_thread.run_sync(
                mount_erofs, image, target, abandon_on_cancel=True
            )
        except (LazybuildError, OSError) as exc:
            self._filesystem.remove_image(name)
            log.warning("layer %s: its whole image did not mount (%s)", descriptor.digest, exc)
            return None
        except BaseException:
            self._filesystem.remove_image(name)
            raise
        self._erofs_mounts[name] = (mount, None)
        seconds = time.perf_counter() - started
        log.info("layer %s: whole image mounted in %.3fs", descriptor.digest, seconds)
        added = control.LayerAdded(path=str(target), mode="local", digest=descriptor.digest)
        return _Mounted(added, None, None, whole=_whole_stats(descriptor))

    def _keep_whole_soon(
        self, layer: LazyLayer, layout: ErofsLayout
    ) -> Callable[[], Awaitable[None]]:
        async def keep() -> None:
            await self._gate.wait_quiet()  # its hashing and copying yield to reads
            await self._keep_whole(layer, layout)

        return keep

    async def _fetch_whole(self, layer: LazyLayer, layout: ErofsLayout) -> None:
        await layer.fetch_everything()
        await self._keep_whole(layer, layout)

    async def _keep_whole(self, layer: LazyLayer, layout: ErofsLayout) -> None:
        """Write the layer's whole image, now that all its chunks are cached, for the
        processes that open it next (this one goes on serving it)."""
        if not self._whole_images:
            return
        stopping = threading.Event()
        write = functools.partial(
            write_whole_image,
            self._state_dir,
            layer.descriptor.annotations.get(TOC_DIGEST_ANNOTATION),
            layout,
            self._cache,
            max_bytes=self._cache.max_bytes,
            stopping=stopping,
        )
        try:
            # Abandoned when cancelled (the process is stopping): ``stopping`` makes it
            # give up at its next file and remove what it wrote.
            await trio.to_thread.run_sync(write, abandon_on_cancel=True)
        finally:
            stopping.set()

    def _withdraw(self, name: str) -> None:
        mounted = self._erofs_mounts.pop(name, None)
        if mounted is not None:
            unmount_erofs(mounted[0])
        self._filesystem.remove_image(name)

    async def _unpack(self, ref: Reference | Path, descriptor: Descriptor) -> _Mounted:
        root = unpacked_root(self._state_dir)
        if isinstance(ref, Reference):
            log.info(
                "layer %s (%s) is not eStargz with a TOC digest: downloading and unpacking it",
                descriptor.digest,
                descriptor.media_type,
            )
            unpacked = await unpack_layer(self._client, ref, descriptor, root)
        else:
            # A layout's blob: read whole, verified as it is read, and kept by digest
            # where downloaded layers are.
            log.info(
                "layer %s (%s) of the layout %s is not eStargz with a TOC digest: unpacking it",
                descriptor.digest,
                descriptor.media_type,
                ref,
            )
            blob = OciLayout(ref).blob_path(descriptor.digest)
            what = f"{ref}: blob {descriptor.digest}"
            unpacked = await unpack_blob_file(blob, descriptor, root, what)
        added = control.LayerAdded(
            path=str(unpacked.path), mode="unpacked", digest=descriptor.digest
        )
        return _Mounted(added, None, unpacked)


async def _close(layer: LazyLayer) -> None:
    """Close a layer that is not to be served: its background work is cancelled (and
    waited for, even when the caller is being cancelled)."""
    with trio.CancelScope(shield=True):
        await layer.aclose()


@dataclass(frozen=True)
class _BigFile:
    layer: str  # the layer's name in the mount
    path: str  # in the layer
    shown: Path  # in its EROFS mount
    size: int


def _drop_big_file_pages(
    mounts: Sequence[tuple[str, tuple[ErofsMount, LazyLayer | None]]],
) -> list[_BigFile]:
    """Drop the page cache of the big files of these EROFS mounts, so that their next
    reads come to this process (and its read recorder) again, or, for whole images,
    show up in the page cache again; returns the latter's files."""
    whole: list[_BigFile] = []
    for name, (mount, layer) in mounts:
        if layer is not None:
            paths = [
                (node.name, node.size)
                for node in layer.index.walk()
                if node.type == "reg" and node.size > PREFETCH_FILE_MAX_BYTES
            ]
        else:
            paths = _big_files_under(mount.target)
        for path, size in paths:
            shown = mount.target / path
            try:
                descriptor = os.open(shown, os.O_RDONLY | os.O_CLOEXEC)
            except OSError:
                continue  # hidden in the image (a whiteout's), or the mount is going
            try:
                os.posix_fadvise(descriptor, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(descriptor)
            if layer is None:
                whole.append(_BigFile(name, path, shown, size))
    return whole


def _big_files_under(root: Path) -> list[tuple[str, int]]:
    """(path, size) of the regular files over ``PREFETCH_FILE_MAX_BYTES`` below ``root``
    (an EROFS mount: the walk is the kernel's, from the image's metadata)."""
    found: list[tuple[str, int]] = []
    pending = [""]
    while pending:
        relative = pending.pop()
        try:
            entries = list(os.scandir(root / relative))
        except OSError:
            continue
        for entry in entries:
            path = f"{relative}/{entry.name}" if relative else entry.name
            if entry.is_dir(follow_symlinks=False):
                pending.append(path)
            elif entry.is_file(follow_symlinks=False):
                size = entry.stat(follow_symlinks=False).st_size
                if size > PREFETCH_FILE_MAX_BYTES:
                    found.append((path, size))
    return found


def _note_resident_pages(files: Sequence[_BigFile], note: AccessLog) -> None:
    for file in files:
        try:
            ranges = resident_ranges(file.shown)
        except OSError as exc:
            log.debug("cannot tell which pages of %s are cached: %s", file.shown, exc)
            continue
        for offset, length in ranges:
            note(file.layer, file.path, offset, length, file.size)


def _whole_stats(descriptor: Descriptor) -> dict[str, Any]:
    """The same keys as ``LayerStats.to_json()``: nothing fetched, one local image."""
    return {
        "mode": "local",
        "digest": descriptor.digest,
        "size": descriptor.size,
        "bytes_fetched": 0,
        "requests": 0,
        "cache_hits": 1,
        "fetch_seconds": 0.0,
        "reused": True,
    }


def _unpacked_stats(unpacked: UnpackedLayer) -> dict[str, Any]:
    """The same keys as ``LayerStats.to_json()``: the whole blob, in one request."""
    fetched = 0 if unpacked.reused else unpacked.size
    return {
        "mode": "unpacked",
        "digest": unpacked.digest,
        "size": unpacked.size,
        "bytes_fetched": fetched,
        "requests": 0 if unpacked.reused else 1,
        "cache_hits": 1 if unpacked.reused else 0,
        "fetch_seconds": unpacked.seconds,
        "reused": unpacked.reused,
    }


class Layers(Protocol):
    async def add(self, ref_text: str, descriptor_json: dict[str, Any]) -> control.LayerAdded: ...

    async def fetch_all(self, digests: Sequence[str]) -> None: ...

    async def prefetch_files(
        self,
        files: dict[str, list[str]],
        ranges: control.LayerRanges,
        layers: Mapping[str, control.AddLayer] | None = None,
    ) -> tuple[int, int]: ...

    async def forget_big_file_pages(self) -> None: ...

    async def note_big_file_reads(self, note: AccessLog) -> None: ...

    def stats(self) -> list[dict[str, Any]]: ...


class ControlServer:
    """Answers control requests; a ``shutdown`` request cancels ``stop``."""

    def __init__(
        self,
        layers: Layers,
        stop: trio.CancelScope,
        reads: ReadRecorder | None = None,
        read_failures: Callable[[], list[dict[str, str]]] | None = None,
        downloads: Callable[[], list[dict[str, Any]]] | None = None,
    ) -> None:
        """``read_failures``: the reads the mount answered with EIO (``stats`` reports
        them, so the owner can say which file of which layer failed, and why).
        ``downloads``: the whole-layer downloads under way (``stats`` reports them, so
        the owner can show their progress)."""
        self._layers = layers
        self._stop = stop
        self._reads = reads or ReadRecorder()
        self._read_failures = read_failures or list
        self._downloads = downloads or list

    async def handle(self, stream: trio.abc.Stream) -> None:
        """Serve one connection. Never raises: an error here would end the whole service."""
        try:
            async with stream:
                await self._converse(stream)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass  # the client went away (e.g. it was cancelled); the work it asked for stays
        except LazybuildError as exc:
            log.warning("control connection dropped: %s", exc)
        except Exception:
            log.exception("control connection failed")

    async def _converse(self, stream: trio.abc.Stream) -> None:
        lines = control.LineReader(stream)
        while (line := await lines.next_line()) is not None:
            reply = await self._answer(line)
            await stream.send_all(control.encode(reply))
            if reply.get("shutdown"):
                self._stop.cancel()
                return

    async def _answer(self, line: bytes) -> dict[str, Any]:
        try:
            request = control.decode_request(line)
            if isinstance(request, control.AddLayer):
                added = await self._layers.add(request.ref, request.descriptor)
                return control.ok(path=added.path, mode=added.mode, digest=added.digest)
            if isinstance(request, control.Stats):
                return control.ok(
                    layers=self._layers.stats(),
                    failures=self._read_failures(),
                    downloads=self._downloads(),
                )
            if isinstance(request, control.FetchAll):
                await self._layers.fetch_all(request.digests)
                return control.ok()
            if isinstance(request, control.MarkReads):
                if request.reread_big_files:
                    await self._layers.forget_big_file_pages()
                return control.ok(mark=self._reads.mark())
            if isinstance(request, control.ReadsSince):
                await self._layers.note_big_file_reads(self._reads)
                # The filesystem names layers by digest hex; clients know digests.
                since = self._reads.since(request.mark)
                ranges = self._reads.ranges_since(request.mark)
                return control.ok(
                    layers={f"sha256:{name}": paths for name, paths in since.items()},
                    ranges={f"sha256:{name}": places for name, places in ranges.items()},
                )
            if isinstance(request, control.PrefetchFiles):
                chunks, size = await self._layers.prefetch_files(
                    request.files, request.ranges, request.layers
                )
                return control.ok(chunks=chunks, bytes=size)
            return control.ok(shutdown=True)
        except LazybuildError as exc:
            log.error("control request failed: %s", exc)
            return control.failure(str(exc))
        except Exception as exc:
            # Tasks of a nursery (fetch_all's, one per layer) fail as an exception group:
            # one whose failures are all the project's errors is its most telling one.
            error = reported_error(exc)
            if error is not None:
                log.error("control request failed: %s", error)
                return control.failure(str(error))
            log.exception("control request failed")
            return control.failure(f"internal error: {type(exc).__name__}: {exc}")


async def serve_control(
    path: Path,
    server: ControlServer,
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    path.unlink(missing_ok=True)
    sock = trio.socket.socket(trio.socket.AF_UNIX, trio.socket.SOCK_STREAM)
    old_umask = os.umask(0o077)  # only the owner (root) may drive the mount
    try:
        await sock.bind(str(path))
    finally:
        os.umask(old_umask)
    sock.listen(64)
    task_status.started()
    await trio.serve_listeners(server.handle, [trio.SocketListener(sock)])


def announce_ready(ready_fd: int | None) -> None:
    """Tell the parent that requests are served now; it waits on the other end of the
    pipe (an end of file without this line means we died starting)."""
    if ready_fd is None:
        return
    try:
        # A parent that is gone already is noticed by stop_without_owner.
        with contextlib.suppress(OSError):
            os.write(ready_fd, b"ready\n")
    finally:
        os.close(ready_fd)


async def open_image_ahead(
    ahead: ImageAhead, layers: Layers, client: RegistryClient, *, with_record: bool = True
) -> None:
    """Open the layers of the image the owner is about to mount (TOCs, prefetch regions)
    while the owner still starts up, and start fetching the files its published workload
    record lists in each layer as soon as that layer is open: the owner's own add_layer
    requests then find the layers open, and its workload the files on their way. Only a
    head start: whatever fails here, the owner's requests fail the same way and report
    it (a broken record costs only speed)."""
    image = await ahead.resolved()
    if image is None:
        return
    recorded = trio.Event()
    plan: PrefetchPlan | None = None

    async def fetch_record() -> None:
        nonlocal plan
        if not with_record:  # a build reads what its steps read, not the image's workload
            recorded.set()
            return
        try:
            entries = await published_record(client, image)
            plan = prefetch_plan(entries, image) if entries else None
        except Exception as exc:  # a hint: the owner reports a broken record
            log.info("the workload record of %s is not used: %s", image.ref, exc)
        finally:
            recorded.set()

    async def open_layer(descriptor: Descriptor) -> None:
        try:
            await layers.add(str(image.ref), descriptor.to_json())
        except Exception as exc:  # a hint: the owner's request reports it
            log.info("opening layer %s ahead of its mount failed: %s", descriptor.digest, exc)
            return
        await recorded.wait()
        if plan is None or descriptor.digest not in plan.files:
            return
        digest = descriptor.digest
        try:
            await layers.prefetch_files(
                {digest: plan.files[digest]}, {digest: plan.ranges.get(digest, {})}
            )
        except Exception as exc:  # a hint: the workload fetches on demand
            log.info("prefetching the recorded files of layer %s failed: %s", digest, exc)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(fetch_record)
        for descriptor in image.manifest.layers:
            nursery.start_soon(open_layer, descriptor)


async def stop_on_signals(
    stop: trio.CancelScope, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
) -> None:
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM, signal.SIGHUP) as signals:
        task_status.started()
        async for signum in signals:
            log.info("%s: unmounting", signal.Signals(signum).name)
            stop.cancel()
            return


async def stop_without_owner(owner_pid: int, stop: trio.CancelScope) -> None:
    """The parent started us in a session of our own (so its Ctrl-C does not unmount under
    it); when it dies without shutting us down, we are reparented and go too."""
    while os.getppid() == owner_pid:
        await trio.sleep(OWNER_POLL_SECONDS)
    log.warning("owner process %d is gone: unmounting", owner_pid)
    stop.cancel()


async def run_fuse(stop: trio.CancelScope) -> None:
    await pyfuse3.main()
    # main() returns when the mount went away under us (umount, fusermount -u).
    log.warning("filesystem was unmounted from outside")
    stop.cancel()


async def serve(options: ServiceOptions, client: RegistryClient, ahead: ImageAhead | None) -> None:
    """Mount, serve the control socket until told to stop, unmount. ``ahead`` (the
    image the owner will mount, being resolved) gets its layers opened as soon as
    layers can be."""
    options.mountpoint.mkdir(parents=True, exist_ok=True)
    cache = await trio.to_thread.run_sync(
        ChunkCache, options.state_dir / "cache", options.cache_max_bytes
    )
    gate = ForegroundGate()
    reads = ReadRecorder()
    # The gate brackets the layers' requests for readers, not the filesystem's reads:
    # background fetching yields the link to readers, not to reads the cache answers.
    filesystem = LazyFilesystem(access_log=reads)
    pyfuse3.init(filesystem, str(options.mountpoint), set(MOUNT_OPTIONS))
    unmounted = False
    layers: LayerSource | None = None
    try:
        async with trio.open_nursery() as nursery:
            stop = nursery.cancel_scope
            layers = LayerSource(
                filesystem=filesystem,
                mountpoint=options.mountpoint,
                state_dir=options.state_dir,
                client=client,
                cache=cache,
                gate=gate,
                nursery=nursery,
                background_fetch=options.background_fetch,
                whole_images=options.whole_images,
                complete_reused_layers=options.complete_reused_layers,
            )
            if ahead is not None:
                nursery.start_soon(
                    functools.partial(
                        open_image_ahead,
                        ahead,
                        layers,
                        client,
                        with_record=options.open_image_record,
                    )
                )
            nursery.start_soon(run_fuse, stop)
            control_server = ControlServer(
                layers, stop, reads, filesystem.read_failures, layers.downloads
            )
            await nursery.start(serve_control, options.control, control_server)
            await nursery.start(stop_on_signals, stop)
            if options.owner_pid is not None:
                nursery.start_soon(stop_without_owner, options.owner_pid, stop)
            announce_ready(options.ready_fd)
            log.info("mounted at %s, control socket %s", options.mountpoint, options.control)
        unmounted = True
    finally:
        options.control.unlink(missing_ok=True)
        if layers is not None:
            layers.unmount_images()  # EROFS mounts sit on files of the FUSE mount
        pyfuse3.close(unmount=True)
        log.info("unmounted %s%s", options.mountpoint, "" if unmounted else " after an error")
