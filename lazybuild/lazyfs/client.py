"""The lazybuild side of the filesystem process: start it, add layers, read stats, stop it.

async with LazyMountService(state_dir) as service:
    mounts = await service.add_image(ref, manifest.layers)   # bottom layer first
    ...stack [m.path for m in mounts] with overlayfs, run things...
    report = await service.stats()
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import secrets
import signal
import subprocess
import sys
import tempfile
from collections.abc import Collection, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, BinaryIO

import trio

from lazybuild.errors import LazybuildError
from lazybuild.lazyfs import control
from lazybuild.lazyfs.control import LayerMode
from lazybuild.lazyfs.forkedservice import ForkedProcess, fork_service
from lazybuild.lazyfs.readahead import widen_readahead
from lazybuild.lazyfs.stale import (
    SERVICE_MODULE,
    MountRecord,
    is_mounted,
    lazy_unmount,
    register_overlay,
    remove_record,
    unregister_overlay,
    write_record,
)
from lazybuild.oci.descriptor import Descriptor
from lazybuild.registry.reference import Reference

START_TIMEOUT = 30.0
STOP_TIMEOUT = 10.0
_STDERR_TAIL = 2000
# sun_path is 108 bytes; longer socket paths go to a private temporary directory.
_MAX_SOCKET_PATH = 100


class FilesystemServiceError(LazybuildError):
    """The filesystem process failed to start, or answered a request with an error."""


@dataclass(frozen=True)
class LayerMount:
    path: Path  # a directory to use as an overlayfs lower layer
    mode: LayerMode
    digest: str


@dataclass(frozen=True)
class LayerFetch:
    digest: str
    mode: LayerMode
    size: int  # compressed layer size
    bytes_fetched: int
    requests: int
    cache_hits: int
    seconds: float

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> LayerFetch:
        """From a ``stats`` reply entry (``LayerStats.to_json()`` keys plus ``mode``)."""
        shown = data.get("mode")
        mode: LayerMode = shown if shown in ("local", "unpacked") else "lazy"
        return cls(
            digest=str(data.get("digest", "")),
            mode=mode,
            size=int(data.get("size", 0)),
            bytes_fetched=int(data.get("bytes_fetched", 0)),
            requests=int(data.get("requests", 0)),
            cache_hits=int(data.get("cache_hits", 0)),
            seconds=float(data.get("fetch_seconds", 0.0)),
        )

    def minus(self, earlier: LayerFetch) -> LayerFetch:
        """The fetching done since ``earlier``, a report of the same layer."""
        return dataclasses.replace(
            self,
            bytes_fetched=max(0, self.bytes_fetched - earlier.bytes_fetched),
            requests=max(0, self.requests - earlier.requests),
            cache_hits=max(0, self.cache_hits - earlier.cache_hits),
            seconds=max(0.0, self.seconds - earlier.seconds),
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "digest": self.digest,
            "mode": self.mode,
            "size": self.size,
            "bytes_fetched": self.bytes_fetched,
            "requests": self.requests,
            "cache_hits": self.cache_hits,
            "seconds": round(self.seconds, 6),
        }


@dataclass(frozen=True)
class LayerDownload:
    """A whole-layer download under way in the filesystem process (a layer that is not
    eStargz, being unpacked): bytes so far, of ``total``, for ``seconds`` now."""

    digest: str
    done: int
    total: int | None
    seconds: float

    @classmethod
    def from_json(cls, data: Any) -> LayerDownload | None:
        """From a ``stats`` reply's ``downloads`` entry; None for a malformed one."""
        if not isinstance(data, dict):
            return None
        digest, done, total = data.get("digest"), data.get("done"), data.get("total")
        seconds = data.get("seconds", 0.0)
        if not isinstance(digest, str) or not isinstance(done, int):
            return None
        if total is not None and not isinstance(total, int):
            return None
        if not isinstance(seconds, int | float):
            return None
        return cls(digest, done, total, float(seconds))

    def to_json(self) -> dict[str, Any]:
        return {
            "digest": self.digest,
            "done": self.done,
            "total": self.total,
            "seconds": round(self.seconds, 3),
        }


@dataclass(frozen=True)
class ReadFailure:
    """A read the lazy filesystem answered with EIO: which file of which layer, and why."""

    layer: str  # digest
    path: str  # in the layer, from its root
    error: str

    @classmethod
    def from_json(cls, data: Any) -> ReadFailure | None:
        if not isinstance(data, dict):
            return None
        layer, path, error = data.get("layer"), data.get("path"), data.get("error")
        if not (isinstance(layer, str) and isinstance(path, str) and isinstance(error, str)):
            return None
        digest = layer if ":" in layer else f"sha256:{layer}"
        return cls(layer=digest, path=path, error=error)

    def describe(self) -> str:
        """One line: the file, its layer, what failed."""
        error = self.error
        # The layer's own messages start with what this line says already.
        for known in (f"layer {self.layer}: ", f"file {self.path.lstrip('/')!r}: "):
            error = error.removeprefix(known)
        return f"reading {self.path} of layer {self.layer} failed: {error}"

    def to_json(self) -> dict[str, str]:
        return {"layer": self.layer, "path": self.path, "error": self.error}


def describe_read_failures(failures: Sequence[ReadFailure]) -> str:
    """One line for the owner's error message: the first failure, and how many more."""
    if not failures:
        return ""
    more = f" (and {len(failures) - 1} more file(s))" if len(failures) > 1 else ""
    return f"the lazy filesystem: {failures[0].describe()}{more}"


@dataclass(frozen=True)
class FetchReport:
    layers: tuple[LayerFetch, ...]
    # Reads answered with EIO (the workload saw "input/output error"), first per file.
    failures: tuple[ReadFailure, ...] = ()
    # Whole-layer downloads under way when the report was made (not in ``layers`` yet).
    downloads: tuple[LayerDownload, ...] = ()

    @property
    def bytes_fetched(self) -> int:
        return sum(layer.bytes_fetched for layer in self.layers)

    @property
    def size(self) -> int:
        return sum(layer.size for layer in self.layers)

    def since(self, earlier: FetchReport, layers: Collection[str]) -> FetchReport:
        """What this report adds to ``earlier`` (of the same process), over ``layers``
        only: one build's share of a filesystem process that serves several (the
        daemon's). Two builds running at once may each count a fetch they shared."""
        before = {layer.digest: layer for layer in earlier.layers}
        known_failures = set(earlier.failures)
        return FetchReport(
            tuple(
                layer.minus(before[layer.digest]) if layer.digest in before else layer
                for layer in self.layers
                if layer.digest in layers
            ),
            tuple(
                failure
                for failure in self.failures
                if failure.layer in layers and failure not in known_failures
            ),
            # Under way now, so nobody's before: a layer being added is not in ``layers``.
            self.downloads,
        )

    def to_json(self) -> dict[str, Any]:
        report: dict[str, Any] = {
            "layers": [layer.to_json() for layer in self.layers],
            "bytes_fetched": self.bytes_fetched,
            "size": self.size,
        }
        if self.failures:
            report["failures"] = [failure.to_json() for failure in self.failures]
        return report


class LazyMountService:
    """Owns one filesystem process and its mount under ``state_dir/mnt/<id>``."""

    def __init__(
        self,
        state_dir: Path,
        *,
        insecure_registries: Iterable[str] = (),
        docker_config: Path | None = None,
        background_fetch: bool = True,
        whole_images: bool = True,
        complete_reused_layers: bool = False,
        cache_max_bytes: int | None = None,
        open_image: str | None = None,
        open_image_record: bool = True,
    ) -> None:
        """``open_image``: the image the caller is about to mount, which the process
        then resolves and opens as soon as it runs, while the caller still starts up
        (and, with ``open_image_record``, prefetches what its published workload record
        lists). ``whole_images=False`` serves every lazy layer through the filesystem process,
        even one whose whole image is local, so that its read recorder sees every read
        (``lazyfs.whole_images``). ``complete_reused_layers``: without ``background_fetch``,
        still fetch whole, in the background, each layer opened before on this machine,
        so that the builds after it mount its whole image."""
        self.state_dir = state_dir
        self.id = secrets.token_hex(6)
        self.mountpoint = state_dir / "mnt" / self.id
        self._insecure_registries = tuple(insecure_registries)
        self._docker_config = docker_config
        self._background_fetch = background_fetch
        self._whole_images = whole_images
        self._complete_reused_layers = complete_reused_layers
        self._cache_max_bytes = cache_max_bytes
        self._open_image = open_image
        self._open_image_record = open_image_record
        self._log_path = state_dir / "mounts" / f"{self.id}.log"
        self._socket_dir: Path | None = None
        self.control_path = state_dir / "mounts" / f"{self.id}.sock"
        self._process: trio.Process | ForkedProcess | None = None
        self._ready_fd: int | None = None  # the process writes "ready" to it once it serves
        # The reads the mount failed, as last asked for (kept when the process stops, so
        # an error reported after the command's end can still say which file failed).
        self.read_failures: tuple[ReadFailure, ...] = ()
        self._serving = False

    @property
    def pid(self) -> int | None:
        """The filesystem process, once started."""
        return None if self._process is None else self._process.pid

    @property
    def running(self) -> bool:
        """Whether the filesystem process is still alive."""
        return self._process is not None and self._process.poll() is None

    def failure_reason(self) -> str:
        """Why the filesystem process stopped, with the tail of its log, for error messages."""
        last_lines = " | ".join(line for line in self._stderr_tail().splitlines()[-3:] if line)
        return f"{self._exit_status()}: {last_lines or 'no log'}"

    # -- lifecycle ---------------------------------------------------------------

    async def spawn(self) -> None:
        """Start the filesystem process without waiting for it to serve, so that its
        start-up overlaps with the caller's; ``async with`` then waits (and stops it at
        the end). A spawned service that is never entered must be ``close``d."""
        if self._process is not None:
            return
        try:
            await self._spawn()
        except BaseException:
            await self.close()
            raise

    def fork(self) -> None:
        """``spawn``, by forking this process (see ``forkedservice``): only before
        ``trio.run``, in a process with one thread. Then ``async with`` as after ``spawn``;
        a forked service that is never entered must be ``close``d (in ``trio.run``)."""
        if self._process is not None:
            return
        with self._starting() as (ready_write, log_file):
            self._process = fork_service(
                self._service_arguments(ready_write), log_fd=log_file.fileno(), keep_fd=ready_write
            )

    async def close(self) -> None:
        """Stop the process and take the mount down (again: a no-op)."""
        with trio.CancelScope(shield=True):
            await self._stop()

    async def __aenter__(self) -> LazyMountService:
        await self.spawn()
        try:
            await self._until_serving()
        except BaseException:
            await self.close()
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()

    def _prepare_directories(self) -> None:
        self.mountpoint.mkdir(parents=True, exist_ok=True)
        self._log_path.parent.mkdir(parents=True, exist_ok=True)
        if len(os.fsencode(self.control_path)) > _MAX_SOCKET_PATH:
            self._socket_dir = Path(tempfile.mkdtemp(prefix="lazybuild-"))
            self.control_path = self._socket_dir / "control.sock"

    async def _spawn(self) -> None:
        with self._starting() as (ready_write, log_file):
            self._process = await trio.lowlevel.open_process(
                [sys.executable, "-m", SERVICE_MODULE, *self._service_arguments(ready_write)],
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=log_file,
                pass_fds=(ready_write,),
                # Our own session: the user's Ctrl-C reaches lazybuild, which then
                # stops the mount in order, instead of pulling it out from under a
                # container.
                start_new_session=True,
            )

    @contextlib.contextmanager
    def _starting(self) -> Iterator[tuple[int, BinaryIO]]:
        """What starting the process takes, however it is started: its directories, the
        write end of its readiness pipe and its log, for the caller to set ``_process``
        with; then the read end is kept and the mount recorded."""
        self._prepare_directories()
        ready_read, ready_write = os.pipe()
        try:
            with self._log_path.open("wb") as log_file:
                yield ready_write, log_file
        except BaseException:
            os.close(ready_read)
            raise
        finally:
            os.close(ready_write)
        assert self._process is not None, "the caller starts the process"
        self._ready_fd = ready_read
        write_record(
            self.state_dir,
            MountRecord(
                id=self.id,
                pid=self._process.pid,
                mountpoint=str(self.mountpoint),
                control=str(self.control_path),
                owner_pid=os.getpid(),
            ),
        )

    async def _until_serving(self) -> None:
        assert self._process is not None and self._ready_fd is not None, "spawn() first"
        ready = trio.lowlevel.FdStream(self._ready_fd)
        self._ready_fd = None
        async with ready:
            with trio.move_on_after(START_TIMEOUT):
                if await ready.receive_some() == b"ready\n":
                    self._serving = True
                    # Serving, so the kernel's INIT gets answered: the stat in
                    # widen_readahead waits for it, and the setting is not overwritten.
                    await trio.to_thread.run_sync(widen_readahead, self.mountpoint)
                    return
                # An end of file: the process died before it served.
                await self._process.wait()
        raise FilesystemServiceError(
            f"the lazy filesystem did not start at {self.mountpoint}"
            f" ({self._exit_status()}): {self._stderr_tail()}"
        )

    def _service_arguments(self, ready_fd: int) -> list[str]:
        command = [
            "--ready-fd",
            str(ready_fd),
            "--mountpoint",
            str(self.mountpoint),
            "--control",
            str(self.control_path),
            "--state-dir",
            str(self.state_dir),
            "--owner-pid",
            str(os.getpid()),
            "--background-fetch" if self._background_fetch else "--no-background-fetch",
            "--whole-images" if self._whole_images else "--no-whole-images",
            "--complete-reused-layers"
            if self._complete_reused_layers
            else "--no-complete-reused-layers",
        ]
        for host in self._insecure_registries:
            command += ["--insecure-registry", host]
        if self._docker_config is not None:
            command += ["--docker-config", str(self._docker_config)]
        if self._cache_max_bytes is not None:
            command += ["--cache-max-bytes", str(self._cache_max_bytes)]
        if self._open_image is not None:
            command += ["--open-image", self._open_image]
            if not self._open_image_record:
                command.append("--no-open-image-record")
        return command

    async def _stop(self) -> None:
        if self._ready_fd is not None:
            os.close(self._ready_fd)
            self._ready_fd = None
        process = self._process
        if process is not None and process.poll() is None:
            asked = False
            with contextlib.suppress(OSError, LazybuildError):
                with trio.move_on_after(STOP_TIMEOUT):
                    if self._serving:
                        await self.stats()  # keeps read_failures for the last word
                    await self._request(control.Shutdown())
                    asked = True
            if not asked:
                # Still starting, so not listening yet: a signal stops it in order (or,
                # while it imports, ends it), instead of a wait for the kill timeout.
                with contextlib.suppress(ProcessLookupError):
                    process.send_signal(signal.SIGTERM)
            with trio.move_on_after(STOP_TIMEOUT):
                await process.wait()
            if process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    process.send_signal(signal.SIGKILL)
                await process.wait()
        if is_mounted(self.mountpoint):
            lazy_unmount(self.mountpoint, fuse=True)
        remove_record(self.state_dir, self.id)
        self.control_path.unlink(missing_ok=True)
        if self._socket_dir is not None:
            with contextlib.suppress(OSError):
                self._socket_dir.rmdir()
        with contextlib.suppress(OSError):
            self.mountpoint.rmdir()
        if process is not None and process.returncode == 0:
            self._log_path.unlink(missing_ok=True)

    # -- requests ----------------------------------------------------------------

    async def add_layer(self, ref: Reference | str, descriptor: Descriptor) -> LayerMount:
        """Add a layer of ``ref``: a registry reference, or an ``oci-layout:`` source
        (``oci.localblob``)."""
        reply = await self._request(control.AddLayer(str(ref), descriptor.to_json()))
        added = control.layer_added(reply)
        return LayerMount(path=Path(added.path), mode=added.mode, digest=added.digest)

    async def add_image(self, ref: Reference, layers: Sequence[Descriptor]) -> list[LayerMount]:
        """All layers at once (unpacks run in parallel); results in the given order."""
        results: list[LayerMount | None] = [None] * len(layers)
        failures: list[LazybuildError] = []

        async def add(position: int, descriptor: Descriptor, cancel: trio.CancelScope) -> None:
            try:
                results[position] = await self.add_layer(ref, descriptor)
            except LazybuildError as exc:
                # The first failure is the answer (one line for the CLI, no exception group).
                failures.append(exc)
                cancel.cancel()

        async with trio.open_nursery() as nursery:
            for position, descriptor in enumerate(layers):
                nursery.start_soon(add, position, descriptor, nursery.cancel_scope)
        if failures:
            raise failures[0]
        return [mount for mount in results if mount is not None]

    async def fetch_all(self, digests: Sequence[str]) -> None:
        """Fetch these added layers whole now, in large requests (before reading all)."""
        await self._request(control.FetchAll(tuple(digests)))

    async def mark_reads(self, *, reread_big_files: bool = False) -> int:
        """A mark in the filesystem's record of reads, for ``reads_since`` and
        ``ranges_since``; with ``reread_big_files``, the kernel forgets the pages it has
        cached of big files, so that every place of them read after it is recorded."""
        reply = await self._request(control.MarkReads(reread_big_files=reread_big_files))
        return int(reply.get("mark", 0))

    async def reads_since(self, mark: int) -> dict[str, list[str]]:
        """By layer digest, the files read since ``mark``, in first-read order."""
        reply = await self._request(control.ReadsSince(mark))
        return control.layer_files(reply.get("layers"), "reads_since reply")

    async def ranges_since(self, mark: int) -> dict[str, tuple[tuple[int, int], ...]]:
        """By path, the places read since ``mark`` in big files (over
        ``PREFETCH_FILE_MAX_BYTES``) of the added layers: what an image's workload read
        of them, whichever layer served each."""
        reply = await self._request(control.ReadsSince(mark))
        by_layer = control.layer_ranges(reply.get("ranges", {}), "reads_since reply")
        return {
            path: tuple(ranges) for places in by_layer.values() for path, ranges in places.items()
        }

    async def prefetch_files(
        self,
        files: dict[str, list[str]],
        ranges: control.LayerRanges | None = None,
        *,
        layers: Mapping[str, tuple[Reference | str, Descriptor]] | None = None,
    ) -> tuple[int, int]:
        """Start fetching these files of added layers, big ones only in their ``ranges``;
        the chunks and compressed bytes scheduled (what was neither cached nor being
        fetched). ``layers`` names where layers not added yet are: the process opens
        them itself, and prefetches as soon as their TOC is verified."""
        sources = {
            digest: control.AddLayer(str(ref), descriptor.to_json())
            for digest, (ref, descriptor) in (layers or {}).items()
        }
        reply = await self._request(control.PrefetchFiles(files, ranges or {}, sources))
        return int(reply.get("chunks", 0)), int(reply.get("bytes", 0))

    async def stats(self) -> FetchReport:
        reply = await self._request(control.Stats())
        layers = reply.get("layers", [])
        entries = reply.get("failures", [])
        failures = tuple(
            failure
            for entry in (entries if isinstance(entries, list) else [])
            if (failure := ReadFailure.from_json(entry)) is not None
        )
        self.read_failures = failures
        listed = reply.get("downloads", [])
        downloads = tuple(
            download
            for entry in (listed if isinstance(listed, list) else [])
            if (download := LayerDownload.from_json(entry)) is not None
        )
        return FetchReport(
            tuple(LayerFetch.from_json(entry) for entry in layers), failures, downloads
        )

    def register_overlay(self, path: Path) -> None:
        """Record an overlay stacked on this mount, so a crash cleanup unmounts it first."""
        register_overlay(self.state_dir, self.id, path)

    def unregister_overlay(self, path: Path) -> None:
        unregister_overlay(self.state_dir, self.id, path)

    async def _request(self, request: control.Request) -> dict[str, Any]:
        try:
            stream = await trio.open_unix_socket(str(self.control_path))
        except OSError as error:
            raise FilesystemServiceError(
                self._gone(f"cannot be reached ({error.strerror})")
            ) from None
        try:
            async with stream:
                await stream.send_all(control.encode_request(request))
                line = await control.LineReader(stream).next_line()
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            line = None  # reset, not closed: the process went away mid-request all the same
        if line is None:
            raise FilesystemServiceError(self._gone("closed the connection"))
        reply = control.decode_object(line, "control reply")
        if not reply.get("ok"):
            raise FilesystemServiceError(str(reply.get("error", "unknown error")))
        return reply

    # -- diagnostics -------------------------------------------------------------

    def _gone(self, what: str) -> str:
        """Why a request got no answer: the process died (and how), or it is alive and
        still dropped the request; its log's last lines either way."""
        code = None if self._process is None else self._process.poll()
        if code is not None:
            how = f"killed by signal {-code}" if code < 0 else f"exit status {code}"
            return (
                f"the lazy filesystem process (pid {self.pid}) died ({how}): {self._stderr_tail()}"
            )
        return f"the lazy filesystem {what}: {self._stderr_tail()}"

    def _exit_status(self) -> str:
        code = None if self._process is None else self._process.poll()
        return "still running" if code is None else f"exit status {code}"

    def _stderr_tail(self) -> str:
        try:
            text = self._log_path.read_bytes()[-_STDERR_TAIL:].decode(errors="replace")
        except OSError:
            return "no log"
        return " | ".join(line for line in text.splitlines() if line.strip()) or "no output"
