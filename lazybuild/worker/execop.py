"""RUN: a process in runc on an overlay of the step's input, its changes a new layer.

The root filesystem is the input snapshot (lazy base layers and local layers) under a
fresh upper directory; after the process exits the overlay comes down and the upper
directory, whiteouts and all, is committed as the step's layer. The process's output
goes to the build's progress as it comes; a non-zero exit fails the step with the
command, the exit code and the last lines it printed.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
from collections import deque
from collections.abc import Sequence
from contextlib import AbstractAsyncContextManager, AsyncExitStack
from dataclasses import replace
from pathlib import Path
from typing import Literal

import trio

from lazybuild.cache.space import filesystem_full
from lazybuild.errors import LazybuildError
from lazybuild.executor.etcfiles import prepare_etc_files
from lazybuild.executor.mounts import MountSpec
from lazybuild.executor.runc import run_container
from lazybuild.executor.spec import Network, ProcessSpec, generate_spec
from lazybuild.executor.users import resolve_user
from lazybuild.graph.ops import Exec, ImageSource
from lazybuild.solver import CacheMap, Job, Result
from lazybuild.worker.execmounts import (
    MountSetupError,
    WritableMount,
    mount_cache_deps,
    ordered_specs,
    secret_storage,
    setup_mount,
)
from lazybuild.worker.imageop import image_layers
from lazybuild.worker.layers import Snapshot
from lazybuild.worker.layerstore import StagingArea
from lazybuild.worker.learnedprefetch import (
    Prefetched,
    learn_reads,
    prefetch_learned,
    start_learning,
)
from lazybuild.worker.opbase import op_digest, slot
from lazybuild.worker.resources import WorkerResources

log = logging.getLogger(__name__)

# BuildKit's default; what `hostname` prints in a RUN step.
DEFAULT_HOSTNAME = "buildkitsandbox"
TAIL_LINES = 10


class ExecError(LazybuildError):
    """The step's process failed; ``tail`` is the end of what it printed."""

    def __init__(self, message: str, exit_code: int, tail: Sequence[str]) -> None:
        super().__init__(message)
        self.process_exit_code = exit_code
        self.tail = tuple(tail)


class ExecNoSpaceError(ExecError):
    """The step's process failed while the state directory (its upper) was full."""

    no_space = True


class ExecOp:
    """``root_image``: the base image under the step's root filesystem when only RUN
    and file steps lie between (its learned prefetch can start before they are done)."""

    def __init__(
        self, op: Exec, resources: WorkerResources, root_image: ImageSource | None = None
    ) -> None:
        self._op = op
        self._resources = resources
        self._root_image = root_image
        self._prefetched: Prefetched | None = None

    async def will_run(self, job: Job) -> None:
        """Start the learned prefetch now: the steps before this one may take a while,
        and the link is idle meanwhile. The base image's layers stand in for the root
        snapshot, which is all a learned record is about."""
        if self._root_image is None or self._resources.learned is None:
            return
        image = await self._resources.images.resolve(self._root_image.ref)
        base = Snapshot(image_layers(image))
        self._prefetched = await prefetch_learned(self._op, base, self._resources)

    async def cache_map(self, job: Job, index: int) -> CacheMap:
        # Proxy settings do not change what a step makes (Docker's rule); secret values
        # are never part of the op at all, only their ids. Extra hosts, /dev/shm's size
        # and ulimits are, as in BuildKit's exec op (its meta and a /dev/shm tmpfs
        # mount): salted in only when given, so other builds keep their keys.
        return CacheMap(
            digest=op_digest(replace(self._op, proxy_env=()), _container_salt(self._resources)),
            deps=mount_cache_deps(self._op, self._resources),
        )

    def acquire(self) -> AbstractAsyncContextManager[None]:
        return slot(self._resources.exec_slots)

    def _snapshot(self, inputs: Sequence[Result], index: int | None) -> Snapshot | None:
        if index is None:
            return None
        snapshot = inputs[index]
        assert isinstance(snapshot, Snapshot)
        return snapshot

    async def exec(self, job: Job, inputs: Sequence[Result]) -> list[Result]:
        op = self._op
        resources = self._resources
        root_mount = op.mounts[0]
        root_snapshot = self._snapshot(inputs, root_mount.input) or Snapshot()
        outputs: dict[int, Snapshot] = {}
        with resources.store.staging() as area, contextlib.ExitStack() as areas:
            writable: list[WritableMount] = []
            async with AsyncExitStack() as stack:
                await stack.enter_async_context(
                    resources.mounter.mounted(
                        root_snapshot, area.merged, upper=area.upper, work=area.work
                    )
                )
                specs: list[MountSpec] = []
                for position, mount in enumerate(op.mounts[1:], start=1):
                    spec, changes = await setup_mount(
                        mount,
                        self._snapshot(inputs, mount.input),
                        position=position,
                        area=area,
                        resources=resources,
                        stack=stack,
                        areas=areas,
                    )
                    if spec is not None:
                        specs.append(spec)
                    if changes is not None:
                        writable.append(changes)
                # A process's environment is written into the bundle's config.json: with
                # secrets in it, the bundle goes where secrets go (memory, not disk).
                env = [*op.env, *op.proxy_env, *self._secret_env()]
                bundle = (
                    secret_storage(area, resources, stack) / "bundle"
                    if len(env) > len(op.env) + len(op.proxy_env)
                    else area.scratch / "bundle"
                )
                learning = await start_learning(
                    job, op, root_snapshot, resources, prefetched=self._prefetched
                )
                await self._run(job, area, specs, env, bundle)
                await learn_reads(learning, resources)
            if root_mount.output is not None:
                outputs[root_mount.output] = root_snapshot.on_top([resources.store.commit(area)])
            for changes in writable:
                assert changes.mount.output is not None
                layer = resources.store.commit(changes.area)
                outputs[changes.mount.output] = changes.base.on_top([layer])
        return [outputs[index] for index in sorted(outputs)]

    async def _run(
        self,
        job: Job,
        area: StagingArea,
        mounts: Sequence[MountSpec],
        env: list[str],
        bundle: Path,
    ) -> None:
        op = self._op
        rootfs = area.merged
        network: Network = (
            self._resources.default_network if op.network == "default" else op.network
        )
        hostname = op.hostname or DEFAULT_HOSTNAME
        user = await trio.to_thread.run_sync(resolve_user, rootfs, op.user)
        etc_mounts = prepare_etc_files(area.scratch, hostname, network, self._resources.extra_hosts)
        spec = generate_spec(
            rootfs=rootfs,
            process=ProcessSpec(op.args, env, op.cwd, user),
            hostname=hostname,
            network=network,
            extra_mounts=[*etc_mounts, *ordered_specs(mounts)],
            shm_size=self._resources.shm_size,
            ulimits=self._resources.ulimits,
        )
        tail: deque[str] = deque(maxlen=TAIL_LINES)
        stdout_read, stdout_write = os.pipe()
        stderr_read, stderr_write = os.pipe()
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_pump, job, "stdout", stdout_read, tail)
                nursery.start_soon(_pump, job, "stderr", stderr_read, tail)
                stdout_read = stderr_read = -1  # the pumps own and close them now
                with open(os.devnull, "rb") as stdin:
                    try:
                        result = await run_container(
                            container_id="lazybuild-" + secrets.token_hex(6),
                            bundle_dir=bundle,
                            spec=spec,
                            stdin=stdin.fileno(),
                            stdout=stdout_write,
                            stderr=stderr_write,
                            forward_signals=False,
                        )
                    finally:
                        os.close(stdout_write)
                        os.close(stderr_write)
                        stdout_write = stderr_write = -1
        finally:
            for descriptor in (stdout_read, stdout_write, stderr_read, stderr_write):
                if descriptor >= 0:
                    os.close(descriptor)
        if result.exit_code != 0:
            # A process that died of a full state dir says so in its own words at best
            # ("No space left on device"); the build says which disk was full.
            error = ExecNoSpaceError if filesystem_full(area.upper) else ExecError
            raise error(
                f"process {_quoted_command(op.args)} did not complete successfully: "
                f"exit code: {result.exit_code}",
                result.exit_code,
                list(tail),
            )

    def _secret_env(self) -> list[str]:
        env = []
        for secret in self._op.secret_env:
            value = self._resources.secrets.get(secret.secret_id)
            if value is None:
                if secret.required:
                    raise MountSetupError(
                        f"secret {secret.secret_id!r} is required but was not given"
                    )
                continue
            env.append(f"{secret.name}={value.decode(errors='replace')}")
        return env


def _container_salt(resources: WorkerResources) -> str:
    parts = []
    if resources.extra_hosts:
        parts.append("hosts=" + ",".join(f"{n}:{a}" for n, a in resources.extra_hosts))
    if resources.shm_size is not None:
        parts.append(f"shm={resources.shm_size}")
    if resources.ulimits:
        parts.append("ulimit=" + ",".join(f"{u.name}={u.soft}:{u.hard}" for u in resources.ulimits))
    return "\x00" + "\x00".join(parts) if parts else ""


async def _pump(
    job: Job, stream: Literal["stdout", "stderr"], descriptor: int, tail: deque[str]
) -> None:
    """Forward a process's output to the build's progress, keeping its last lines."""
    partial = b""
    async with trio.lowlevel.FdStream(descriptor) as pipe:
        while data := await pipe.receive_some(65536):
            await job.log(stream, data)
            lines = (partial + data).split(b"\n")
            partial = lines.pop()
            tail.extend(line.decode(errors="replace") for line in lines)
    if partial:
        tail.append(partial.decode(errors="replace"))


def _quoted_command(args: Sequence[str]) -> str:
    return '"' + " ".join(args).replace('"', '\\"') + '"'
