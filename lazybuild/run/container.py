"""`lazybuild run`: an image's process in runc, over a lazily mounted root filesystem.

Like ``docker run --rm``: the image config gives entrypoint, cmd, env, user and
working directory; the command line overrides them; the writable layer is thrown
away afterwards and the process's exit code is returned.
"""

from __future__ import annotations

import secrets
import shutil
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import trio

from lazybuild.errors import LazybuildError, LazyReadError
from lazybuild.executor.etcfiles import prepare_etc_files
from lazybuild.executor.runc import run_container
from lazybuild.executor.spec import Network, ProcessSpec, generate_spec
from lazybuild.executor.users import resolve_user
from lazybuild.lazyfs.client import FetchReport, LazyMountService, describe_read_failures
from lazybuild.progress.lines import Progress
from lazybuild.registry.options import RegistryOptions
from lazybuild.run.imagemount import mounted_image
from lazybuild.run.settings import run_settings
from lazybuild.snapshot.overlay import is_mounted


@dataclass(frozen=True)
class RunRequest:
    image: str
    command: tuple[str, ...] = ()
    env: tuple[str, ...] = ()
    workdir: str | None = None
    user: str | None = None
    entrypoint: tuple[str, ...] | None = None
    network: Network = "none"
    hostname: str | None = None
    background_fetch: bool = False  # for a filesystem process run_image starts itself


@dataclass(frozen=True)
class RunOutcome:
    exit_code: int
    report: FetchReport


async def run_image(
    request: RunRequest,
    *,
    state_dir: Path,
    registry: RegistryOptions,
    progress: Progress,
    stdio: Sequence[int | None] = (None, None, None),
    service: LazyMountService | None = None,
) -> RunOutcome:
    """Run ``request``; through ``service`` when given (spawned early by the caller, so
    its start-up overlaps the caller's; it is closed here either way)."""
    container_id = "lazybuild-" + secrets.token_hex(6)
    workspace = state_dir / "containers" / container_id
    rootfs, upper, work, bundle = (workspace / name for name in ("rootfs", "upper", "work", "b"))
    for directory in (rootfs, upper, work):
        directory.mkdir(parents=True)
    try:
        async with mounted_image(
            request.image,
            rootfs,
            state_dir=state_dir,
            registry=registry,
            progress=progress,
            upper=upper,
            work=work,
            background_fetch=request.background_fetch,
            prefetch_record=True,
            service=service,
        ) as image:
            settings = run_settings(
                image.config,
                command=request.command,
                env=request.env,
                workdir=request.workdir,
                user=request.user,
                entrypoint=request.entrypoint,
            )
            try:
                user = await trio.to_thread.run_sync(resolve_user, rootfs, settings.user)
            except OSError as exc:
                what = f"the users of {image.reference}"
                raise await _read_error(image.service, exc, what) from exc
            hostname = request.hostname or container_id[-12:]
            extra_mounts = prepare_etc_files(workspace, hostname, request.network)
            spec = generate_spec(
                rootfs=rootfs,
                process=ProcessSpec(settings.args, settings.env, settings.cwd, user),
                hostname=hostname,
                network=request.network,
                extra_mounts=extra_mounts,
            )
            progress.line(f"running {list(settings.args)} as {user.name or user.uid}")
            try:
                result = await run_container(
                    container_id=container_id,
                    bundle_dir=bundle,
                    spec=spec,
                    stdin=stdio[0],
                    stdout=stdio[1],
                    stderr=stdio[2],
                )
            except LazybuildError as exc:
                # "exec /usr/bin/python3: input/output error": say which file failed, why.
                raise await _with_read_failures(image.service, exc) from exc
            report = await image.fetch_report()
            if report.failures:
                # The workload saw only "input/output error"; say which file failed and why.
                print(
                    f"lazybuild: error: {describe_read_failures(report.failures)}", file=sys.stderr
                )
    finally:
        with trio.CancelScope(shield=True):
            await trio.to_thread.run_sync(_remove_workspace, workspace)
    return RunOutcome(result.exit_code, report)


async def _read_error(service: LazyMountService, error: OSError, what: str) -> LazyReadError:
    """An error reading ``what`` through the mount, naming the file and, when the lazy
    filesystem failed it, the layer and what went wrong."""
    where = f" ({error.filename})" if error.filename else ""
    text = f"reading {what}{where}: {error.strerror or error}"
    try:
        failures = (await service.stats()).failures
    except (OSError, LazybuildError) as exc:
        return LazyReadError(f"{text} (the lazy filesystem cannot say why: {exc})")
    detail = describe_read_failures(failures)
    return LazyReadError(f"{text}; {detail}" if detail else text)


async def _with_read_failures(service: LazyMountService, error: LazybuildError) -> LazybuildError:
    """``error``, or when the lazy filesystem failed reads, a ``LazyReadError`` that
    names them too (with ``error``'s exit status)."""
    try:
        failures = (await service.stats()).failures
    except (OSError, LazybuildError):
        return error
    if not failures:
        return error
    combined = LazyReadError(f"{error}; {describe_read_failures(failures)}")
    combined.exit_code = error.exit_code
    return combined


def _remove_workspace(workspace: Path) -> None:
    # Deleting through a mount would write whiteouts into a live overlay; if the root
    # filesystem is somehow still mounted, leave the directory for stale-mount cleanup.
    if is_mounted(workspace / "rootfs"):
        return
    shutil.rmtree(workspace, ignore_errors=True)
