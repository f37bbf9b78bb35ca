"""The filesystem process: one FUSE mount for all layers, driven over a unix control socket.

pyfuse3 allows one FUSE session per process, and a mount that outlives a crashed
builder is better than one torn down under a running container, so the mount lives
in this process of its own (``python -m lazybuild.lazyfs.service``, or forked from the
CLI by ``forkedservice``; see ``client`` for the side that starts it, ``server`` for
the mount and its control socket, ``control`` for the protocol).

This module is what the process runs first, and it imports little: given the image
its owner will mount, it starts resolving it before the mount's machinery (pyfuse3,
the layer code: ~0.1 s) is imported, in a thread meanwhile, so the manifest's round
trips and the imports overlap.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import trio

from lazybuild.cache.chunkcache import DEFAULT_MAX_BYTES
from lazybuild.errors import LazybuildError
from lazybuild.oci.platform import host_platform
from lazybuild.registry.client import RegistryClient, ResolvedManifest
from lazybuild.registry.reference import Reference

log = logging.getLogger("lazybuild.lazyfs.service")


@dataclass(frozen=True)
class ServiceOptions:
    mountpoint: Path
    control: Path
    state_dir: Path
    insecure_registries: tuple[str, ...] = ()
    docker_config: Path | None = None
    cache_max_bytes: int = DEFAULT_MAX_BYTES
    background_fetch: bool = True
    whole_images: bool = True  # mount local whole images of layers; keep them when fetched
    # Fetch a layer whole in the background (then keep its whole image) when it is in
    # use again: its TOC was kept from an earlier open here.
    complete_reused_layers: bool = False
    owner_pid: int | None = None  # exit when this process is gone
    ready_fd: int | None = None  # written to, then closed, once requests are served
    open_image: str | None = None  # the image the owner will mount, opened ahead
    # Whether the files ``open_image``'s published workload record lists are prefetched
    # too: for a container of the image, not for a build on it.
    open_image_record: bool = True


def parse_args(argv: Sequence[str]) -> ServiceOptions:
    parser = argparse.ArgumentParser(prog="python -m lazybuild.lazyfs.service")
    parser.add_argument("--mountpoint", type=Path, required=True)
    parser.add_argument("--control", type=Path, required=True)
    parser.add_argument("--state-dir", type=Path, required=True)
    parser.add_argument("--insecure-registry", action="append", default=[])
    parser.add_argument("--docker-config", type=Path)
    parser.add_argument("--cache-max-bytes", type=int, default=DEFAULT_MAX_BYTES)
    parser.add_argument("--background-fetch", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--whole-images", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument(
        "--complete-reused-layers", action=argparse.BooleanOptionalAction, default=False
    )
    parser.add_argument("--owner-pid", type=int)
    parser.add_argument("--ready-fd", type=int)
    parser.add_argument(
        "--open-image", metavar="REF", help="the image the owner will mount: open its layers now"
    )
    parser.add_argument("--open-image-record", action=argparse.BooleanOptionalAction, default=True)
    args = parser.parse_args(argv)
    return ServiceOptions(
        mountpoint=args.mountpoint,
        control=args.control,
        state_dir=args.state_dir,
        insecure_registries=tuple(args.insecure_registry),
        docker_config=args.docker_config,
        cache_max_bytes=args.cache_max_bytes,
        background_fetch=args.background_fetch,
        whole_images=args.whole_images,
        complete_reused_layers=args.complete_reused_layers,
        owner_pid=args.owner_pid,
        ready_fd=args.ready_fd,
        open_image=args.open_image,
        open_image_record=args.open_image_record,
    )


class ImageAhead:
    """The image the owner is about to mount, resolved from the moment the process
    starts, so that its layers can be opened (``server.open_image_ahead``) as soon as
    the mount can take them. Only a head start: whatever fails here, the owner's own
    requests fail the same way and report it."""

    def __init__(self, client: RegistryClient, image: str) -> None:
        self._client = client
        self._image = image
        self._done = trio.Event()
        self._resolved: ResolvedManifest | None = None

    async def resolve(self) -> None:
        try:
            ref = Reference.parse(self._image)
            self._resolved = await self._client.resolve_manifest(ref, host_platform())
        except Exception as exc:  # a hint: the owner's resolve reports it
            log.info("resolving %s ahead of its mount failed: %s", self._image, exc)
        finally:
            self._done.set()

    async def resolved(self) -> ResolvedManifest | None:
        """The image's manifest once resolved; None when it could not be."""
        await self._done.wait()
        return self._resolved


async def _serve(options: ServiceOptions) -> None:
    failure: LazybuildError | OSError | None = None
    async with (
        RegistryClient(
            insecure_registries=options.insecure_registries,
            docker_config=options.docker_config,
        ) as client,
        trio.open_nursery() as nursery,
    ):
        ahead = None
        if options.open_image is not None:
            ahead = ImageAhead(client, options.open_image)
            nursery.start_soon(ahead.resolve)
        server = await trio.to_thread.run_sync(importlib.import_module, "lazybuild.lazyfs.server")
        try:
            await server.serve(options, client, ahead)
        except (LazybuildError, OSError) as exc:
            # Raised here it would leave the nursery inside an exception group, and main
            # would print a traceback where one line says it (a full state dir).
            failure = exc
        nursery.cancel_scope.cancel()  # a resolve still going after the unmount
    if failure is not None:
        raise failure


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(
        level=logging.INFO,
        format="lazyfs[%(process)d] %(levelname)s %(message)s",
        stream=sys.stderr,
        force=True,  # a process forked from the CLI has the CLI's logging set up
    )
    # One line per range request would drown what matters in the log.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    options = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        trio.run(_serve, options)
    except LazybuildError as exc:
        log.error("%s", exc)
        return 1
    except OSError as exc:
        # One line for the parent's error message (a full, unwritable state dir).
        log.error("%s%s", exc.strerror or exc, f": {exc.filename}" if exc.filename else "")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
