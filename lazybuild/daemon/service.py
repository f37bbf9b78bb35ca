"""The ``Control`` service: each RPC runs in one of the grpc server's worker threads.

``DiskUsage`` and ``Prune`` are ``lazybuild du`` / ``prune`` on the daemon's state
directory, the very functions the commands run (``cli.cache_commands``). A user error
(a ``LazybuildError``, an ``OSError`` with its file) ends the call with its one line as
the status details; anything else is a bug and keeps its traceback in the daemon's log.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import NoReturn, TypeVar

import grpc

from lazybuild import __version__
from lazybuild.api.control.v1 import control_pb2, control_pb2_grpc
from lazybuild.cli.cache_commands import measure_usage, prune_state
from lazybuild.errors import LazybuildError

_T = TypeVar("_T")


class DaemonState:
    """What the RPCs share: the state directory, the addresses served, running builds."""

    def __init__(self, state_dir: Path, addresses: Sequence[str] = ()) -> None:
        self.state_dir = state_dir
        self.addresses: tuple[str, ...] = tuple(addresses)
        self._lock = threading.Lock()
        self._builds_running = 0

    @property
    def builds_running(self) -> int:
        with self._lock:
            return self._builds_running


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
