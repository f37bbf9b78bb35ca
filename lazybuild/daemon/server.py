"""The daemon's life: lock the state directory, clean up after a killed predecessor,
listen, serve until SIGTERM or SIGINT, then stop cleanly and exit 0.

Why a grpc server with a thread pool rather than ``grpc.aio``: ``grpc.aio`` runs on
asyncio, and everything lazybuild does (the build driver, the lazy filesystem's client,
the registry client) runs on trio; two event loops cannot share a thread, so an aio
server would need trio in a thread of its own anyway. With the thread-pool server, this
process's one trio loop waits for signals and owns the long-lived work, and each RPC
runs in a pool thread, doing blocking work there (``du``, ``prune``) or handing async
work to the trio loop (``trio.from_thread``). The pool's size also bounds how many RPCs
run at once.
"""

from __future__ import annotations

import contextlib
import functools
import os
import shutil
import signal
import socket
import sys
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import trio

from lazybuild.api.control.v1 import control_pb2_grpc
from lazybuild.cli.cache_commands import PruneEntry, prune_line
from lazybuild.daemon.builds import Builds
from lazybuild.daemon.config import DaemonConfig
from lazybuild.daemon.gc import collect_periodically
from lazybuild.daemon.listeners import Bound, bind_tcp, bind_unix, remove_socket
from lazybuild.daemon.service import BUILDS_DIR, ControlService, DaemonState
from lazybuild.daemon.statelock import StateLock
from lazybuild.imagebuild.filesystem import build_filesystem
from lazybuild.lazyfs.shared import SharedFilesystem
from lazybuild.registry.options import RegistryOptions

# Each Build call takes a thread while it runs (waiting ones too, and a Cancel may come
# for each); Info, DiskUsage and Prune take one of the spare ones.
_SPARE_THREADS = 4
# How long RPCs under way get to finish once the daemon is told to stop.
_STOP_GRACE_SECONDS = 10.0


def say(message: str) -> None:
    """A line of the daemon's log (stderr; journald keeps it under systemd)."""
    print(f"lazybuild: {message}", file=sys.stderr, flush=True)


async def serve(config: DaemonConfig) -> int:
    """Runs the daemon until SIGTERM or SIGINT; returns its exit status (0)."""
    state_dir = config.state_dir
    state_dir.mkdir(parents=True, exist_ok=True)
    with StateLock(state_dir):
        await trio.to_thread.run_sync(_clean_up_after_killed_runs, state_dir)
        state = DaemonState(state_dir, config.max_context_size)
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            registry = RegistryOptions(config.insecure_registries, config.docker_config)
            # One filesystem process serves every build's lazy layers, warm between
            # builds; it stops after the builds (their overlays are on its mounts).
            filesystem = SharedFilesystem(
                functools.partial(
                    build_filesystem, state_dir, registry, cache_max_bytes=config.cache_size
                )
            )
            async with (
                _running_server(config, state) as bound,
                contextlib.aclosing(filesystem),
                trio.open_nursery() as nursery,
            ):
                state.builds = Builds(
                    nursery,
                    state_dir=state_dir,
                    registry=registry,
                    max_parallel=config.max_parallel_builds,
                    filesystem=filesystem,
                )
                nursery.start_soon(filesystem.run)
                nursery.start_soon(collect_periodically, state_dir, config.gc, _say_collected)
                for served in bound:
                    say(f"serving on {served.reachable}")
                _notify_systemd(b"READY=1")
                async for signum in signals:
                    say(f"{signal.Signals(signum).name}: stopping")
                    break
                _notify_systemd(b"STOPPING=1")
                # Builds under way are cancelled: each takes its containers and
                # mounts down before its task ends, and the nursery waits for that.
                state.builds.close()
                nursery.cancel_scope.cancel()
    say("stopped")
    return 0


@contextlib.asynccontextmanager
async def _running_server(config: DaemonConfig, state: DaemonState) -> AsyncIterator[list[Bound]]:
    """A started server on every configured address; stopped, its sockets removed, on
    the way out (calls under way get ``_STOP_GRACE_SECONDS``). The wait runs in a
    thread: calls ending meanwhile may need the trio loop."""
    # Per running build: its Build call, a waiting one's, and a --ssh build's ForwardSsh.
    pool = ThreadPoolExecutor(
        max_workers=3 * config.max_parallel_builds + _SPARE_THREADS,
        thread_name_prefix="lazybuild-rpc",
    )
    server = grpc.server(pool)
    control_pb2_grpc.add_ControlServicer_to_server(ControlService(state), server)
    bound: list[Bound] = []
    try:
        unix, tcp = config.unix_and_tcp()
        for address in unix:
            bound.append(bind_unix(server, address, config.socket_gid))
        for address in tcp:
            assert config.tls is not None  # the config refuses TCP without it
            bound.append(bind_tcp(server, address, config.tls))
        state.addresses = tuple(b.reachable for b in bound)
        server.start()
        yield bound
    finally:
        # New calls are refused at once; the event is set when those under way ended.
        stopped = server.stop(_STOP_GRACE_SECONDS)
        await trio.to_thread.run_sync(stopped.wait)
        await trio.to_thread.run_sync(functools.partial(pool.shutdown, wait=True))
        for served in bound:
            remove_socket(served)


def _say_collected(entry: PruneEntry) -> None:
    say(f"gc: {prune_line(entry)}")


def _clean_up_after_killed_runs(state_dir: Path) -> None:
    """What a SIGKILLed predecessor (or any killed lazybuild) left: its containers first
    (an orphan keeps its overlay, and the mounts under it, busy), then its mounts; the
    same clean-up every command that touches state does first (``cli.main``). Only
    leftovers of dead processes go: one-shot commands may share the state directory."""
    from lazybuild.executor.orphans import reap_orphaned_containers
    from lazybuild.executor.runc import DEFAULT_RUNC, DEFAULT_STATE_ROOT
    from lazybuild.lazyfs.stale import cleanup_stale_mounts
    from lazybuild.worker.layerstore import LayerStore

    for container_id in reap_orphaned_containers(DEFAULT_RUNC, DEFAULT_STATE_ROOT):
        say(f"removed container {container_id} of a killed run")
    for mountpoint in cleanup_stale_mounts(state_dir):
        say(f"removed a stale mount of a killed run: {mountpoint}")
    # The staging areas (and their overlays) of steps that were running, as the next
    # build would remove them, in the order ``run_build`` does it.
    if (state_dir / "build" / "staging").is_dir():
        LayerStore(state_dir).clean_staging()
    # Contexts and outputs of builds a killed daemon was running (no build runs yet).
    leftovers = state_dir / BUILDS_DIR
    if leftovers.is_dir():
        shutil.rmtree(leftovers, ignore_errors=True)


def _notify_systemd(message: bytes) -> None:
    """``sd_notify`` for a ``Type=notify`` unit; nothing outside systemd."""
    target = os.environ.get("NOTIFY_SOCKET")
    if not target:
        return
    if target.startswith("@"):
        target = "\0" + target[1:]  # an abstract socket
    with (
        contextlib.suppress(OSError),
        socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as notify,
    ):
        notify.connect(target)
        notify.sendall(message)
