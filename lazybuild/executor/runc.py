"""Run one container with runc: write the bundle, `runc run`, always clean up.

As in buildkit's runc executor, every run is one bundle and one container id, and
`runc delete --force` plus removal of the bundle follow whatever happened: a normal
exit, an error, or a trio cancellation (which SIGKILLs the container first).
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import trio

from lazybuild.executor.bundle import remove_bundle, write_config
from lazybuild.executor.errors import (
    CommandNotExecutableError,
    CommandNotFoundError,
    ContainerError,
)
from lazybuild.executor.etcfiles import prepare_etc_files
from lazybuild.executor.limits import fit_rlimits
from lazybuild.executor.mountstubs import missing_mount_points, remove_mount_stubs
from lazybuild.executor.orphans import OWNER_ANNOTATION
from lazybuild.executor.rootpath import ensure_working_dir
from lazybuild.state.processes import process_identity

__all__ = [
    "CGROUP_PARENT",
    "DEFAULT_RUNC",
    "DEFAULT_STATE_ROOT",
    "RunResult",
    "prepare_etc_files",
    "run_container",
]

DEFAULT_RUNC = "/usr/sbin/runc"
# Our own state root keeps `runc list` of other tools (and theirs of ours) clean.
DEFAULT_STATE_ROOT = Path("/run/lazybuild/runc")
# Relative, so runc nests it under the caller's own cgroups: a build run inside a
# memory-limited job stays inside that limit (cgroup v1 here: memory is nested).
CGROUP_PARENT = "lazybuild"

_CONTAINER_ID = re.compile(r"^[\w+\-.]+$")
# After SIGKILL a container dies at once; this only bounds a wedged runc.
_KILL_GRACE_SECONDS = 10.0
_CLEANUP_TIMEOUT_SECONDS = 30.0
# Like `docker run`: a container whose init ignores SIGINT can still be stopped.
_INTERRUPTS_BEFORE_KILL = 3
# How long a container may take to exit after a forwarded SIGINT/SIGTERM (docker stop's).
STOP_GRACE_SECONDS = 10.0


@dataclass
class RunResult:
    """`exit_code` follows the shell: 128+n when the process died of signal n.

    `signal` is that n. A process that itself exits with 128+n is indistinguishable
    (runc reports the same number), as with `docker run`.
    """

    exit_code: int
    signal: int | None


async def run_container(
    *,
    container_id: str,
    bundle_dir: Path,
    spec: dict[str, Any],
    stdin: int | None = None,
    stdout: int | None = None,
    stderr: int | None = None,
    runc: str = DEFAULT_RUNC,
    state_root: Path = DEFAULT_STATE_ROOT,
    forward_signals: bool = True,
) -> RunResult:
    """Run the container in the foreground until its init exits.

    stdio are inherited unless file descriptors are given. `spec` is not modified;
    `linux.cgroupsPath` defaults to lazybuild/<container_id>. Raises ContainerError
    when runc cannot start the process (bad spec, missing executable, ...).
    """
    if not _CONTAINER_ID.match(container_id):
        raise ContainerError(f"invalid container id {container_id!r}")
    runtime = _Runc(runc, state_root)
    stubs: list[Path] = []
    try:
        spec = fit_rlimits(_with_owner(_with_cgroup_path(spec, container_id)))
        bundle_dir.mkdir(parents=True, exist_ok=True)
        rootfs = bundle_dir / spec["root"]["path"]  # OCI allows bundle-relative
        ensure_working_dir(rootfs, spec["process"]["cwd"])
        stubs = missing_mount_points(rootfs, [m["destination"] for m in spec.get("mounts", [])])
        write_config(bundle_dir, spec)
        log_path = bundle_dir / "runc-log.json"
        returncode = await _run_foreground(
            runtime,
            container_id=container_id,
            bundle_dir=bundle_dir,
            log_path=log_path,
            stdio=(stdin, stdout, stderr),
            forward_signals=forward_signals,
        )
        failure = _runc_error(log_path)
        if failure:
            raise _start_failure(f"container {container_id} failed to start: {failure}")
        return _result(returncode)
    finally:
        with trio.CancelScope(shield=True), trio.move_on_after(_CLEANUP_TIMEOUT_SECONDS):
            await runtime.delete(container_id)
        remove_mount_stubs(stubs)
        remove_bundle(bundle_dir)


class _Runc:
    def __init__(self, binary: str, state_root: Path) -> None:
        self.binary = binary
        self.state_root = state_root

    def argv(self, *args: str) -> list[str]:
        return [self.binary, "--root", str(self.state_root), *args]

    async def kill(self, container_id: str, signame: str) -> bool:
        return await self._quiet("kill", container_id, signame)

    async def delete(self, container_id: str) -> bool:
        return await self._quiet("delete", "--force", container_id)

    async def _quiet(self, *args: str) -> bool:
        # Failure is expected here (the container is already gone or not yet there).
        result = await trio.run_process(
            self.argv(*args), check=False, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        return result.returncode == 0


async def _run_foreground(
    runtime: _Runc,
    *,
    container_id: str,
    bundle_dir: Path,
    log_path: Path,
    stdio: tuple[int | None, int | None, int | None],
    forward_signals: bool,
) -> int:
    runtime.state_root.mkdir(mode=0o700, parents=True, exist_ok=True)
    argv = runtime.argv("--log", str(log_path), "--log-format", "json")
    argv += ["run", "--bundle", str(bundle_dir), container_id]
    process = await trio.lowlevel.open_process(
        argv,
        stdin=stdio[0],
        stdout=stdio[1],
        stderr=stdio[2],
        # Own session: a terminal's Ctrl-C reaches us only, and we forward it once.
        start_new_session=True,
    )
    try:
        async with trio.open_nursery() as nursery:
            if forward_signals and threading.current_thread() is threading.main_thread():
                await nursery.start(_forward_signals, process, runtime, container_id)
            returncode = await process.wait()
            nursery.cancel_scope.cancel()
    finally:
        if process.returncode is None:
            with trio.CancelScope(shield=True):
                await _kill_and_reap(process, runtime, container_id)
    return returncode


async def _forward_signals(
    process: trio.Process,
    runtime: _Runc,
    container_id: str,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    # runc passes signals it receives on to the container's init process. An init that
    # ignores them (a PID 1 without handlers does) is killed after a grace period, as
    # `docker stop` does, so an interrupted lazybuild always ends and cleans up.
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        task_status.started()
        interrupts = 0
        async with trio.open_nursery() as nursery:
            async for signum in signals:
                interrupts += signum == signal.SIGINT
                if interrupts >= _INTERRUPTS_BEFORE_KILL:
                    await runtime.kill(container_id, "KILL")
                elif process.returncode is None:
                    process.send_signal(signum)
                    if interrupts + (signum == signal.SIGTERM) == 1:
                        nursery.start_soon(_kill_after_grace, runtime, container_id)


async def _kill_after_grace(runtime: _Runc, container_id: str) -> None:
    await trio.sleep(STOP_GRACE_SECONDS)
    await runtime.kill(container_id, "KILL")


async def _kill_and_reap(process: trio.Process, runtime: _Runc, container_id: str) -> None:
    """SIGKILL the container and wait for `runc run` to report its death."""
    with trio.move_on_after(_KILL_GRACE_SECONDS):
        # Retried: cancelled early, the container may not exist yet to be killed.
        while process.returncode is None:
            await runtime.kill(container_id, "KILL")
            with trio.move_on_after(0.2):
                await process.wait()
    if process.returncode is None:
        process.kill()  # runc itself is stuck; `delete --force` takes the container
        await process.wait()


def _with_cgroup_path(spec: dict[str, Any], container_id: str) -> dict[str, Any]:
    linux = dict(spec.get("linux", {}))
    linux.setdefault("cgroupsPath", f"{CGROUP_PARENT}/{container_id}")
    return {**spec, "linux": linux}


def _with_owner(spec: dict[str, Any]) -> dict[str, Any]:
    """Name this process as the container's owner, so that if it is killed (SIGKILL
    skips every cleanup) the next lazybuild command can reap the container."""
    identity = process_identity(os.getpid())
    if identity is None:
        return spec
    return {**spec, "annotations": {**spec.get("annotations", {}), OWNER_ANNOTATION: identity}}


def _runc_error(log_path: Path) -> str | None:
    """runc's own error, if it logged one; the container's exit is not an error."""
    try:
        lines = log_path.read_text(errors="replace").splitlines()
    except FileNotFoundError:
        return None
    errors = []
    for line in lines:
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if isinstance(entry, dict) and entry.get("level") in ("error", "fatal"):
            errors.append(str(entry.get("msg", "")))
    return errors[-1] if errors else None


def _result(returncode: int) -> RunResult:
    if returncode < 0:  # runc itself died of a signal
        return RunResult(128 - returncode, -returncode)
    if 128 < returncode <= 128 + signal.SIGRTMAX:
        return RunResult(returncode, returncode - 128)
    return RunResult(returncode, None)


def _start_failure(message: str) -> ContainerError:
    """The error for a container whose process never started, classed as Docker does."""
    if "executable file not found" in message or "no such file or directory" in message:
        return CommandNotFoundError(message)
    if "permission denied" in message:
        return CommandNotExecutableError(message)
    return ContainerError(message)
