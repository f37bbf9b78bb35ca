"""The ``Control`` service: each RPC runs in one of the grpc server's worker threads.

``Build`` receives the header, the context and the local caches to import in its
thread (a build with ``--ssh`` also expects the client's ``ForwardSsh`` call:
``sshrelay``), then has the build run on the daemon's trio loop (``builds``) and relays its
progress, archive outputs, local cache exports and result; the build's private
directory goes when the call ends, however it ends.

``DiskUsage`` and ``Prune`` are ``lazybuild du`` / ``prune`` on the daemon's state
directory, the very functions the commands run (``cli.cache_commands``). A user error
(a ``LazybuildError``, an ``OSError`` with its file) ends the call with its one line as
the status details; anything else is a bug and keeps its traceback in the daemon's log.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import NoReturn, TypeVar

import grpc

from lazybuild import __version__
from lazybuild.api.control.v1 import control_pb2, control_pb2_grpc
from lazybuild.cli.cache_commands import measure_usage, prune_state
from lazybuild.daemon.buildcontext import receive
from lazybuild.daemon.buildjob import ArchiveDest
from lazybuild.daemon.builds import Builds
from lazybuild.daemon.sshrelay import relays as ssh_relays
from lazybuild.errors import LazybuildError

_T = TypeVar("_T")


# Where each build's context, Dockerfile and archive outputs live while it runs (0700;
# what a killed daemon left there is removed at the next start).
BUILDS_DIR = "daemon-builds"
_OUTPUT_CHUNK_BYTES = 1 << 20


class DaemonState:
    """What the RPCs share: the state directory, the addresses served, the builds (set
    once the trio loop runs them), the largest context taken."""

    def __init__(self, state_dir: Path, max_context_bytes: int) -> None:
        self.state_dir = state_dir
        self.max_context_bytes = max_context_bytes
        self.addresses: tuple[str, ...] = ()
        self.builds: Builds | None = None

    @property
    def builds_running(self) -> int:
        return self.builds.running if self.builds is not None else 0


class ControlService(control_pb2_grpc.ControlServicer):
    def __init__(self, state: DaemonState) -> None:
        self.state = state

    def Info(  # noqa: N802 (the RPC's name)
        self, request: control_pb2.InfoRequest, context: grpc.ServicerContext
    ) -> control_pb2.InfoResponse:
        return control_pb2.InfoResponse(
            version=__version__,
            state_dir=str(self.state.state_dir),
            addresses=self.state.addresses,
            builds_running=self.state.builds_running,
            pid=os.getpid(),
        )

    def DiskUsage(  # noqa: N802
        self, request: control_pb2.DiskUsageRequest, context: grpc.ServicerContext
    ) -> control_pb2.DiskUsageResponse:
        entries = _answering(context, lambda: measure_usage(self.state.state_dir))
        return control_pb2.DiskUsageResponse(
            state_dir=str(self.state.state_dir),
            entries=[
                control_pb2.UsageEntry(label=e.label, count=e.count, unit=e.unit, size=e.size)
                for e in entries
            ],
        )

    def Prune(  # noqa: N802
        self, request: control_pb2.PruneRequest, context: grpc.ServicerContext
    ) -> control_pb2.PruneResponse:
        entries = _answering(context, lambda: prune_state(self.state.state_dir, request.keep_bytes))
        return control_pb2.PruneResponse(
            entries=[
                control_pb2.PruneEntry(
                    label=e.label, count=e.count, size=e.size, kept_because=e.kept_because
                )
                for e in entries
            ]
        )

    def Build(  # noqa: N802
        self,
        request_iterator: Iterator[control_pb2.BuildRequest],
        context: grpc.ServicerContext,
    ) -> Iterator[control_pb2.BuildResponse]:
        builds = self.state.builds
        if builds is None:
            _abort(context, grpc.StatusCode.UNAVAILABLE, "the daemon is not ready for builds")
        builds_dir = self.state.state_dir / BUILDS_DIR
        builds_dir.mkdir(mode=0o700, exist_ok=True)
        workdir = Path(tempfile.mkdtemp(prefix="build-", dir=builds_dir))
        job = None
        received = None
        try:
            received = _answering(
                context,
                lambda: receive(request_iterator, workdir, self.state.max_context_bytes),
            )
            if received.header.ssh_ids:
                ssh_relays.expect(received.header.build_id, frozenset(received.header.ssh_ids))
            job = _answering(context, lambda: builds.start(received, workdir))
            started = job

            def on_call_end() -> None:
                # A client that goes away (Ctrl-C, a killed CI job) cancels its build.
                builds.cancel(started.id)

            context.add_callback(on_call_end)
            while True:
                events, finished = job.reported()
                for event in events:
                    yield control_pb2.BuildResponse(progress_event=event)
                if finished is not None:
                    break
            if finished.cancelled or finished.result is None:
                _abort(context, grpc.StatusCode.CANCELLED, "the build was cancelled")
            if not finished.result.error:
                for archive in finished.archives:
                    yield from _archive_chunks(archive)
            yield control_pb2.BuildResponse(result=finished.result)
        finally:
            if job is not None:
                builds.cancel(job.id)
                job.done.wait()
            if received is not None and received.header.ssh_ids:
                ssh_relays.forget(received.header.build_id)
            shutil.rmtree(workdir, ignore_errors=True)

    def ForwardSsh(  # noqa: N802
        self,
        request_iterator: Iterator[control_pb2.SshFrame],
        context: grpc.ServicerContext,
    ) -> Iterator[control_pb2.SshFrame]:
        """The client's ssh agents for its build (``sshrelay``): its first frame names
        the build; its frames are read in a thread of their own while the daemon's go
        out from this one."""
        first = next(request_iterator, None)
        relay = ssh_relays.claim(first.build_id) if first is not None else None
        if relay is None:
            _abort(context, grpc.StatusCode.NOT_FOUND, "no build of this id waits for ssh agents")

        def read() -> None:
            try:
                for frame in request_iterator:
                    relay.deliver(frame)
            except grpc.RpcError:
                pass  # the client went away
            finally:
                relay.client_gone()

        context.add_callback(relay.client_gone)
        threading.Thread(target=read, name="ssh-frames", daemon=True).start()
        yield from relay.frames_out()

    def Cancel(  # noqa: N802
        self, request: control_pb2.CancelRequest, context: grpc.ServicerContext
    ) -> control_pb2.CancelResponse:
        builds = self.state.builds
        found = builds is not None and builds.cancel(request.build_id)
        return control_pb2.CancelResponse(found=found)


def _archive_chunks(archive: ArchiveDest) -> Iterator[control_pb2.BuildResponse]:
    path = archive.path
    if archive.directory:
        # A directory (a local cache's OCI layout too) goes as a tar of it: owners,
        # modes, xattrs, hardlinks, symlinks and devices kept (the layer writer's,
        # whose tree is a plain one here).
        from lazybuild.snapshot.diff import write_upper_as_tar

        path = archive.path.with_name(f"{archive.path.name}.tar")
        with path.open("wb") as out:
            write_upper_as_tar(archive.path, out)
    with path.open("rb") as file:
        while chunk := file.read(_OUTPUT_CHUNK_BYTES):
            if archive.cache:
                yield control_pb2.BuildResponse(
                    cache=control_pb2.CacheChunk(index=archive.index, data=chunk)
                )
            else:
                yield control_pb2.BuildResponse(
                    output=control_pb2.OutputChunk(index=archive.index, data=chunk)
                )


def _answering(context: grpc.ServicerContext, work: Callable[[], _T]) -> _T:
    """``work()``; a user error aborts the call with its one line."""
    try:
        return work()
    except LazybuildError as error:
        _abort(context, grpc.StatusCode.FAILED_PRECONDITION, str(error))
    except OSError as error:
        where = f": {error.filename}" if error.filename else ""
        _abort(context, grpc.StatusCode.INTERNAL, f"{error.strerror or error}{where}")


def _abort(context: grpc.ServicerContext, code: grpc.StatusCode, message: str) -> NoReturn:
    context.abort(code, " ".join(message.split()))
    raise AssertionError("unreachable: abort raises")
