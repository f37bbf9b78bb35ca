"""The daemon's running builds: each one a task on the daemon's trio loop, fed and read
by the grpc thread that serves its ``Build`` call.

A call's thread receives the context (blocking reads of the request stream), then
``start``s the build on the trio loop (``trio.from_thread``) and relays what the build
reports, from a queue, as its responses. ``cancel`` (the ``Cancel`` RPC, a client that
went away, the daemon stopping) cancels the build's scope: the driver's own exit stack
then takes its containers and mounts down before the task ends. At most
``max_parallel`` builds run at once; the others wait their turn.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
from dataclasses import dataclass, field
from pathlib import Path

import trio

from lazybuild.api.control.v1 import control_pb2
from lazybuild.daemon.buildcontext import ReceivedBuild
from lazybuild.daemon.buildjob import ArchiveDest, run_job
from lazybuild.errors import LazybuildError, UsageError, reported_error
from lazybuild.lazyfs.shared import SharedFilesystem
from lazybuild.registry.options import RegistryOptions

log = logging.getLogger(__name__)


class DaemonStoppingError(UsageError):
    """A build asked for while the daemon stops."""


@dataclass
class Finished:
    """How a build ended: its result (failed ones carry their error in it) and the
    archives to stream back; ``cancelled`` when it was cancelled instead."""

    result: control_pb2.BuildResult | None = None
    archives: list[ArchiveDest] = field(default_factory=list)
    cancelled: bool = False


@dataclass
class Job:
    id: str
    received: ReceivedBuild
    workdir: Path
    scope: trio.CancelScope = field(default_factory=trio.CancelScope)
    # Progress events (rawjson lines), then one ``Finished``.
    reports: queue.SimpleQueue[str | Finished] = field(default_factory=queue.SimpleQueue)
    done: threading.Event = field(default_factory=threading.Event)

    def reported(self) -> tuple[list[str], Finished | None]:
        """Blocks for what the build reported next: events, or its end."""
        item = self.reports.get()
        events: list[str] = []
        while isinstance(item, str):
            events.append(item)
            try:
                item = self.reports.get_nowait()
            except queue.Empty:
                return events, None
        return events, item


class Builds:
    def __init__(
        self,
        nursery: trio.Nursery,
        *,
        state_dir: Path,
        registry: RegistryOptions,
        max_parallel: int,
        filesystem: SharedFilesystem | None = None,
    ) -> None:
        self._nursery = nursery
        self._token = trio.lowlevel.current_trio_token()
        self._state_dir = state_dir
        self._registry = registry
        self._filesystem = filesystem
        self._slots = trio.Semaphore(max_parallel)
        self._running: dict[str, Job] = {}
        self._lock = threading.Lock()
        self._closed = False

    @property
    def running(self) -> int:
        with self._lock:
            return len(self._running)

    # -- from grpc threads --------------------------------------------------------------

    def start(self, received: ReceivedBuild, workdir: Path) -> Job:
        job = Job(received.header.build_id, received, workdir)
        with self._lock:
            if self._closed:
                raise DaemonStoppingError("the daemon is stopping: no new builds")
            if not job.id or job.id in self._running:
                raise UsageError(f"build id {job.id!r} is empty or in use")
            self._running[job.id] = job
        try:
            trio.from_thread.run_sync(
                self._nursery.start_soon, self._run, job, trio_token=self._token
            )
        except BaseException:
            self._forget(job)
            raise
        return job

    def cancel(self, build_id: str) -> bool:
        """Cancels the build ``build_id``; whether one was running."""
        with self._lock:
            job = self._running.get(build_id)
        if job is None:
            return False
        # A loop that is gone took the build with it.
        with contextlib.suppress(trio.RunFinishedError):
            trio.from_thread.run_sync(job.scope.cancel, trio_token=self._token)
        return True

    # -- on the trio loop ---------------------------------------------------------------

    def close(self) -> None:
        """No new builds; those running are cancelled."""
        with self._lock:
            self._closed = True
            jobs = list(self._running.values())
        for job in jobs:
            job.scope.cancel()

    async def _run(self, job: Job) -> None:
        finished = Finished(cancelled=True)
        try:
            with job.scope:
                async with self._slots:
                    result, archives = await run_job(
                        job.received,
                        workdir=job.workdir,
                        state_dir=self._state_dir,
                        registry=self._registry,
                        emit_event=job.reports.put,
                        filesystem=self._filesystem,
                    )
                finished = Finished(result, archives)
        except Exception as error:  # answered to the client, never raised in the loop
            finished = Finished(_failure(error))
        finally:
            job.reports.put(finished)
            self._forget(job)
            job.done.set()

    def _forget(self, job: Job) -> None:
        with self._lock:
            if self._running.get(job.id) is job:
                del self._running[job.id]


def _failure(error: Exception) -> control_pb2.BuildResult:
    """The result of a build that raised ``error``: the one line ``lazybuild build``
    would print, the failed step's output tail, the exit status."""
    from lazybuild.imagebuild.driver import BuildFailedError

    found = reported_error(error, also=(OSError,))
    if isinstance(found, LazybuildError):
        tail = found.tail if isinstance(found, BuildFailedError) else ()
        return control_pb2.BuildResult(error=str(found), error_tail=tail, exit_code=found.exit_code)
    if isinstance(found, OSError):
        where = f": {found.filename}" if found.filename else ""
        return control_pb2.BuildResult(error=f"{found.strerror or found}{where}", exit_code=1)
    log.error("build failed with a bug", exc_info=error)
    return control_pb2.BuildResult(
        error=f"the builder failed ({type(error).__name__}: {error}); see its log",
        exit_code=1,
    )
