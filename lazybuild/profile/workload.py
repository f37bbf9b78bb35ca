"""Run an image's workload in runc and record every file it opens or reads, in order.

The container runs over the image's root filesystem (an overlay mount, writable so the
workload may write; the writes are the caller's to throw away), with Docker's defaults
(``executor.spec``) and no network unless asked. A fanotify filesystem mark on the
overlay (see ``fanotify``) sees each access as it happens, whichever layer serves it.

The workload's own failure is never an error here: a process that cannot start, exits
non-zero, crashes or outlives the timeout is reported in the outcome, and the files it
read until then are the record. It is stopped (SIGKILL through runc) at the timeout, or
as soon as a line of its output matches ``ready``: a server is profiled until it is
ready to serve.
"""

from __future__ import annotations

import os
import re
import secrets
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import trio

from lazybuild.errors import LazybuildError
from lazybuild.executor.etcfiles import prepare_etc_files
from lazybuild.executor.runc import RunResult, run_container
from lazybuild.executor.spec import Network, ProcessSpec, generate_spec
from lazybuild.executor.users import resolve_user
from lazybuild.profile.fanotify import AccessLog, FanotifyError, FilesystemWatch
from lazybuild.run.settings import run_settings
from lazybuild.snapshot.mountinfo import mount_points

DEFAULT_TIMEOUT = 10.0
# After the container is gone, how long its output may take to drain.
_OUTPUT_DRAIN_SECONDS = 2.0
# A line longer than this is handed on (and matched) in pieces.
_MAX_LINE = 64 * 1024

OutcomeKind = Literal["exited", "ready", "timed-out", "failed-to-start"]
OutputSink = Callable[[str, str], None]
"""Called with (stream name, line) for every line the workload writes."""


class ProfileError(LazybuildError):
    """Recording could not be set up (not the workload failing: that is an outcome)."""


@dataclass(frozen=True)
class WorkloadOutcome:
    kind: OutcomeKind
    seconds: float  # from the start of the container to its end (ready: to the ready line)
    exit_code: int | None = None
    signal: int | None = None
    reason: str = ""  # why it failed to start

    @property
    def succeeded(self) -> bool:
        """Ran to completion (exit 0) or to readiness."""
        return self.kind == "ready" or (self.kind == "exited" and self.exit_code == 0)

    def describe(self) -> str:
        took = f"after {self.seconds:.1f}s"
        if self.kind == "ready":
            return f"was ready {took} and was stopped"
        if self.kind == "timed-out":
            return f"was still running at the timeout ({took}) and was stopped"
        if self.kind == "failed-to-start":
            return f"failed to start: {self.reason}"
        if self.signal is not None:
            return f"was killed by signal {self.signal} {took}"
        return f"exited with status {self.exit_code} {took}"

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"outcome": self.kind, "seconds": round(self.seconds, 3)}
        if self.exit_code is not None:
            out["exitCode"] = self.exit_code
        if self.signal is not None:
            out["signal"] = self.signal
        if self.reason:
            out["reason"] = self.reason
        return out


@dataclass(frozen=True)
class WorkloadRecord:
    args: tuple[str, ...]  # what ran (empty when there was nothing to run)
    files: tuple[str, ...]  # relative to the root, first access order, each once
    outcome: WorkloadOutcome
    events: int = 0  # fanotify events read
    lost_events: bool = False  # the kernel's queue overflowed: the record may miss files


@dataclass
class _Watching:
    """State shared by the tasks of one run."""

    ready: re.Pattern[str] | None
    output: OutputSink | None
    stop: trio.CancelScope
    ready_at: float | None = None  # time.monotonic() of the ready line

    def line(self, stream: str, data: bytes) -> None:
        text = data.decode("utf-8", "replace").rstrip("\r")
        if self.output is not None:
            self.output(stream, text)
        self.check_ready(text)

    def check_ready(self, text: str) -> None:
        if self.ready is not None and self.ready_at is None and self.ready.search(text):
            self.ready_at = time.monotonic()
            self.stop.cancel()


async def record_workload(
    rootfs: Path,
    config: Mapping[str, Any],
    *,
    command: Sequence[str] | None = None,
    env: Sequence[str] = (),
    timeout: float = DEFAULT_TIMEOUT,
    ready: re.Pattern[str] | None = None,
    network: Network = "none",
    scratch_dir: Path,
    output: OutputSink | None = None,
) -> WorkloadRecord:
    """Run the image's workload on ``rootfs`` and record the files it reads.

    ``rootfs``: the image's root filesystem, an overlay mount point (writable, or the
    workload cannot write). ``config``: the OCI image config (entrypoint, cmd, env,
    user, working directory). ``command`` replaces the image's whole command line
    (entrypoint and cmd); ``env`` entries are ``K=V`` (``K`` alone copies the host's
    value) over the image's. ``scratch_dir`` is for the bundle and /etc files (the
    caller removes it). Raises ``ProfileError`` when recording cannot be set up;
    never for the workload's own failure.
    """
    if timeout <= 0:
        raise ProfileError(f"workload timeout must be positive, not {timeout}")
    _require_overlay(rootfs)
    try:
        settings = run_settings(config, env=env, entrypoint=command)
        user = await trio.to_thread.run_sync(resolve_user, rootfs, settings.user)
    except LazybuildError as exc:
        return WorkloadRecord((), (), WorkloadOutcome("failed-to-start", 0.0, reason=str(exc)))
    container_id = "lazybuild-profile-" + secrets.token_hex(6)
    hostname = container_id[-12:]
    scratch_dir.mkdir(parents=True, exist_ok=True)
    extra_mounts = prepare_etc_files(scratch_dir, hostname, network)
    spec = generate_spec(
        rootfs=rootfs,
        process=ProcessSpec(settings.args, settings.env, settings.cwd, user),
        hostname=hostname,
        network=network,
        extra_mounts=extra_mounts,
    )
    log = AccessLog(rootfs)
    try:
        watch = FilesystemWatch(rootfs)
    except FanotifyError as exc:
        raise ProfileError(str(exc)) from None
    with watch:
        outcome = await _run_watched(
            watch,
            log,
            container_id=container_id,
            bundle_dir=scratch_dir / "bundle",
            spec=spec,
            timeout=timeout,
            ready=ready,
            output=output,
        )
        log.add(watch.read_events())
    return WorkloadRecord(
        args=tuple(settings.args),
        files=log.files,
        outcome=outcome,
        events=watch.events_read,
        lost_events=watch.overflowed,
    )


async def _run_watched(
    watch: FilesystemWatch,
    log: AccessLog,
    *,
    container_id: str,
    bundle_dir: Path,
    spec: dict[str, Any],
    timeout: float,
    ready: re.Pattern[str] | None,
    output: OutputSink | None,
) -> WorkloadOutcome:
    stop = trio.CancelScope(deadline=trio.current_time() + timeout)
    watching = _Watching(ready, output, stop)
    result: RunResult | None = None
    failure = ""
    started = time.monotonic()
    stdin = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
    out_read, out_write = os.pipe()
    err_read, err_write = os.pipe()
    writers = [out_write, err_write]
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_follow, watch, log)
            drained = [trio.Event(), trio.Event()]
            nursery.start_soon(_pump, out_read, "stdout", watching, drained[0])
            nursery.start_soon(_pump, err_read, "stderr", watching, drained[1])
            out_read = err_read = -1  # the pumps own them now
            try:
                with stop:
                    result = await run_container(
                        container_id=container_id,
                        bundle_dir=bundle_dir,
                        spec=spec,
                        stdin=stdin,
                        stdout=out_write,
                        stderr=err_write,
                        # Ctrl-C stops the whole command, not just the workload.
                        forward_signals=False,
                    )
            except LazybuildError as exc:  # runc could not start the process
                failure = str(exc)
            finally:
                _close_all(writers)
            seconds = time.monotonic() - started
            with trio.move_on_after(_OUTPUT_DRAIN_SECONDS):
                for event in drained:
                    await event.wait()
            nursery.cancel_scope.cancel()
    finally:
        _close_all([stdin, out_read, err_read, *writers])
    if failure:
        return WorkloadOutcome("failed-to-start", seconds, reason=failure)
    if result is None:  # stopped by us
        if watching.ready_at is not None:
            return WorkloadOutcome("ready", watching.ready_at - started)
        return WorkloadOutcome("timed-out", seconds)
    return WorkloadOutcome("exited", seconds, exit_code=result.exit_code, signal=result.signal)


def _close_all(fds: list[int]) -> None:
    for index, fd in enumerate(fds):
        if fd >= 0:
            os.close(fd)
            fds[index] = -1


async def _follow(watch: FilesystemWatch, log: AccessLog) -> None:
    async for batch in watch.batches():
        log.add(batch)


async def _pump(fd: int, name: str, watching: _Watching, done: trio.Event) -> None:
    """Read one output stream line by line until its end (or cancellation)."""
    pending = b""
    try:
        async with trio.lowlevel.FdStream(fd) as stream:
            while chunk := await stream.receive_some(_MAX_LINE):
                pending += chunk
                *lines, pending = pending.split(b"\n")
                for line in lines:
                    watching.line(name, line)
                if len(pending) >= _MAX_LINE:
                    watching.line(name, pending)
                    pending = b""
                elif pending:
                    # A prompt-like ready message may never end its line.
                    watching.check_ready(pending.decode("utf-8", "replace"))
            if pending:
                watching.line(name, pending)
    finally:
        done.set()


def _require_overlay(rootfs: Path) -> None:
    """The mark goes on the root filesystem's superblock, so it must be a mount of its
    own: an overlay mounted for this container (as ``imagemount`` and the build do)."""
    resolved = Path(os.path.realpath(rootfs))
    if resolved not in set(mount_points()):
        raise ProfileError(f"{rootfs} is not a mount point; mount the image there first")
    fstype = _filesystem_type(resolved)
    if fstype != "overlay":
        raise ProfileError(
            f"{rootfs} is a {fstype or 'unknown'} mount, not an overlay: recording needs "
            "the container's root filesystem to be an overlay of its own"
        )


def _filesystem_type(mountpoint: Path) -> str | None:
    """The type of the top-most mount at ``mountpoint`` (from our mountinfo)."""
    found = None
    with open("/proc/self/mountinfo", encoding="utf-8", errors="surrogateescape") as lines:
        for line in lines:
            fields = line.rstrip("\n").split(" ")
            if len(fields) < 10 or "-" not in fields:
                continue
            point = re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), fields[4])
            if Path(point) == mountpoint:
                found = fields[fields.index("-") + 1]
    return found
