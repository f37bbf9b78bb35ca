"""``mount``, ``umount`` and ``run``: images used in place, fetched lazily."""

from __future__ import annotations

import argparse
import json
import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from lazybuild.cli.options import registry_options, state_dir
from lazybuild.errors import UsageError

if TYPE_CHECKING:
    from lazybuild.lazyfs.client import FetchReport, LazyMountService

_UNMOUNT_POLL_SECONDS = 0.5
_UMOUNT_WAIT_SECONDS = 30.0


def add_parsers(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    mount = commands.add_parser(
        "mount", help="mount an image's root filesystem until interrupted or unmounted"
    )
    mount.add_argument("image", metavar="IMAGE", help="registry reference or oci:DIR[:tag]")
    mount.add_argument("directory", type=Path, metavar="DIR", help="where to mount it")
    mount.add_argument(
        "--upper", type=Path, metavar="DIR", help="make it writable, keeping changes in DIR"
    )
    mount.add_argument(
        "--no-background-fetch",
        dest="background_fetch",
        action="store_false",
        help="fetch only what is read (default: fetch the rest when reads go quiet)",
    )
    _add_fetch_report(mount)
    mount.set_defaults(run=run_mount)

    umount = commands.add_parser("umount", help="unmount what `lazybuild mount` mounted")
    umount.add_argument(
        "directory", type=Path, metavar="DIR", help="the directory `lazybuild mount` mounted"
    )
    umount.set_defaults(run=run_umount)

    run = commands.add_parser("run", help="run an image's command like `docker run --rm`")
    run.add_argument(
        "-e",
        "--env",
        action="append",
        default=[],
        metavar="K=V",
        help="set an environment variable, over the image's (repeatable; a bare K takes "
        "its value from this environment)",
    )
    run.add_argument(
        "-w", "--workdir", metavar="DIR", help="working directory (default: the image's)"
    )
    run.add_argument(
        "-u",
        "--user",
        metavar="USER[:GROUP]",
        help="user (and group) to run as, by name or id (default: the image's)",
    )
    run.add_argument("--entrypoint", metavar="PROGRAM", help="replace the image's entrypoint")
    run.add_argument(
        "--network",
        choices=("host", "none"),
        default="host",
        help="host (default: there is no bridge network) or none",
    )
    run.add_argument(
        "--hostname", metavar="NAME", help="the container's host name (default: its id)"
    )
    run.add_argument(
        "--background-fetch",
        action="store_true",
        help="also fetch the rest of the image when reads go quiet (default: only what is read)",
    )
    _add_fetch_report(run)
    run.add_argument("image", metavar="IMAGE", help="registry reference or oci:DIR[:tag]")
    run.add_argument(
        "process_args", nargs=argparse.REMAINDER, metavar="COMMAND", help="command and arguments"
    )
    run.set_defaults(run=run_run, make_filesystem=run_filesystem)


def _add_fetch_report(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--fetch-report", type=Path, metavar="FILE", help="write the fetch report as JSON"
    )


def _finish_report(args: argparse.Namespace, report: FetchReport) -> None:
    from lazybuild.run.imagemount import render_fetch_report

    if not args.quiet:
        print(render_fetch_report(report), file=sys.stderr)
    if args.fetch_report is not None:
        args.fetch_report.write_text(json.dumps(report.to_json(), indent=2) + "\n")


async def run_mount(args: argparse.Namespace) -> int:
    import trio

    from lazybuild.lazyfs.client import FilesystemServiceError
    from lazybuild.progress.lines import Progress
    from lazybuild.progress.transfer import reporting, terminal_view
    from lazybuild.run.imagemount import mounted_image
    from lazybuild.snapshot.overlay import is_mounted

    progress = Progress(quiet=args.quiet)
    target: Path = args.directory.resolve()
    upper: Path | None = args.upper.resolve() if args.upper else None
    work = upper.parent / f".{upper.name}.work" if upper else None
    for directory in (upper, work):
        if directory is not None:
            directory.mkdir(parents=True, exist_ok=True)
    # Signals are taken from the start: one that arrives while the mount is coming up
    # cancels it (and everything is unmounted); once it is up, one ends it cleanly.
    is_up = False
    stop = trio.Event()
    # Whole-layer downloads (layers that are not eStargz) are redrawn on a terminal.
    with (
        reporting(terminal_view(quiet=args.quiet)),
        trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals,
    ):
        async with trio.open_nursery() as nursery:

            async def until_signal() -> None:
                async for _ in signals:
                    if is_up:
                        stop.set()
                    else:
                        raise KeyboardInterrupt

            nursery.start_soon(until_signal)
            async with mounted_image(
                args.image,
                target,
                state_dir=state_dir(args),
                registry=registry_options(args),
                progress=progress,
                upper=upper,
                work=work,
                background_fetch=args.background_fetch,
            ) as image:
                is_up = True
                mode = "writable" if upper else "read-only"
                progress.line(
                    f"mounted {image.reference} at {target} ({mode}); "
                    f"stop with Ctrl-C or `lazybuild umount {target}`"
                )
                async with trio.open_nursery() as waiters:

                    async def until_stopped() -> None:
                        await stop.wait()
                        waiters.cancel_scope.cancel()

                    async def until_unmounted() -> None:
                        while is_mounted(target):
                            if not image.service.running:
                                raise FilesystemServiceError(
                                    f"the filesystem behind {target} stopped "
                                    f"({image.service.failure_reason()}); unmounting"
                                )
                            await trio.sleep(_UNMOUNT_POLL_SECONDS)
                        waiters.cancel_scope.cancel()

                    waiters.start_soon(until_stopped)
                    waiters.start_soon(until_unmounted)
                report = await image.fetch_report()
            nursery.cancel_scope.cancel()
    _finish_report(args, report)
    return 0


async def run_umount(args: argparse.Namespace) -> int:
    import trio

    from lazybuild.lazyfs.stale import read_record, records_dir
    from lazybuild.snapshot.overlay import is_mounted, unmount

    target = str(args.directory.resolve())
    if not is_mounted(Path(target)):
        raise UsageError(f"{target} is not mounted")
    owners = [
        path
        for path in sorted(records_dir(state_dir(args)).glob("*.json"))
        if (record := read_record(path)) is not None and target in record.overlays
    ]
    if not owners:
        raise UsageError(f"{target} is not a lazybuild mount")
    await trio.to_thread.run_sync(unmount, Path(target))
    # The `lazybuild mount` that owns it notices, prints its report and stops its
    # filesystem process; wait for that so scripts can rely on it being gone.
    with trio.move_on_after(_UMOUNT_WAIT_SECONDS):
        while any(path.exists() for path in owners):
            await trio.sleep(0.1)
    return 0


def run_filesystem(args: argparse.Namespace) -> LazyMountService:
    from lazybuild.lazyfs.client import LazyMountService

    registry = registry_options(args)
    return LazyMountService(
        state_dir(args),
        insecure_registries=registry.insecure_registries,
        docker_config=registry.docker_config,
        background_fetch=args.background_fetch,
        # An OCI layout's image is opened by the command itself (imagemount).
        open_image=None if args.image.startswith("oci:") else args.image,
    )


async def run_run(args: argparse.Namespace) -> int:
    # Forked by main before trio started when it could be (see lazyfs.forkedservice);
    # else started here, before the rest of the run machinery is imported: the
    # filesystem process's own start-up (pyfuse3, a mount) overlaps with ours either way.
    service = args.filesystem or run_filesystem(args)
    await service.spawn()
    try:
        return await _run(args, service)
    finally:
        await service.close()


async def _run(args: argparse.Namespace, service: LazyMountService) -> int:
    from lazybuild.progress.lines import Progress
    from lazybuild.progress.transfer import reporting, terminal_view
    from lazybuild.run.container import RunRequest, run_image

    request = RunRequest(
        image=args.image,
        command=tuple(args.process_args),
        env=tuple(args.env),
        workdir=args.workdir,
        user=args.user,
        entrypoint=(args.entrypoint,) if args.entrypoint is not None else None,
        network=args.network,
        hostname=args.hostname,
    )
    # Whole-layer downloads (layers that are not eStargz) are redrawn on a terminal.
    with reporting(terminal_view(quiet=args.quiet)):
        outcome = await run_image(
            request,
            state_dir=state_dir(args),
            registry=registry_options(args),
            progress=Progress(quiet=args.quiet),
            service=service,
        )
    _finish_report(args, outcome.report)
    return outcome.exit_code
