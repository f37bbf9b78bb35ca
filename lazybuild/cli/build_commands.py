"""``lazybuild build``: the flags of ``docker buildx build``, one build, its outputs."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, cast

from lazybuild.cli import build_flags
from lazybuild.cli.optimize_commands import add_workload_arguments
from lazybuild.cli.options import registry_options, state_dir
from lazybuild.errors import LazybuildError

if TYPE_CHECKING:
    from lazybuild.lazyfs.client import LazyMountService


def add_parsers(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    from lazybuild.progress.modes import MODES

    build = commands.add_parser(
        "build", help="build an image from a Dockerfile, base images mounted lazily"
    )
    build.add_argument(
        "context",
        metavar="CONTEXT",
        help="the build context: a directory; a git URL (https://HOST/REPO.git#REF:SUBDIR, "
        "git@HOST:REPO, git://, ssh://, github.com/OWNER/REPO), cloned with git; or - "
        "(standard input: a tar, plain or gzip/bzip2/xz/zstd, is the context; anything "
        "else is the Dockerfile, with no context)",
    )
    build.add_argument(
        "-f",
        "--file",
        type=Path,
        metavar="FILE",
        help="the Dockerfile (default CONTEXT/Dockerfile; in a tar or git context, a path "
        "in it; - reads it from standard input)",
    )
    build.add_argument(
        "--build-context",
        action="append",
        default=[],
        metavar="NAME=DIR|NAME=docker-image://REF|NAME=oci-layout://DIR[:TAG][@DIGEST]",
        help="a named context: FROM NAME, COPY --from=NAME and RUN --mount from=NAME get "
        "it instead of the image or stage of that name (repeatable); oci-layout:// is an "
        "OCI layout directory's image, whose layers must be eStargz",
    )
    build.add_argument(
        "-t",
        "--tag",
        action="append",
        default=[],
        metavar="NAME",
        help="name the image (repeatable; a registry reference such as "
        "registry.example/app:1.0, used by --push and -o type=registry|docker|oci)",
    )
    build.add_argument(
        "--build-arg",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="set an ARG (repeatable; a bare KEY takes its value from the environment)",
    )
    build.add_argument("--target", metavar="STAGE", help="the stage to build")
    build.add_argument("--platform", metavar="OS/ARCH", help="only the host's platform")
    build.add_argument("--no-cache", action="store_true", help="run every step")
    build.add_argument(
        "--no-cache-filter",
        action="append",
        default=[],
        metavar="STAGE",
        help="run every step of this stage, cache or not (repeatable; by name)",
    )
    build.add_argument("--pull", action="store_true", help="check base images for newer versions")
    build.add_argument("--push", action="store_true", help="push to the registry (-t names)")
    build.add_argument("--load", action="store_true", help="load into the local Docker engine")
    build.add_argument(
        "-o",
        "--output",
        action="append",
        default=[],
        metavar="SPEC",
        help="type=registry|oci|docker|local,dest=...,name=...",
    )
    build.add_argument(
        "--progress",
        choices=MODES,
        default=None,
        help="progress display (default: $BUILDKIT_PROGRESS, else auto)",
    )
    build.add_argument(
        "-q",
        "--quiet",
        action="store_true",
        default=argparse.SUPPRESS,  # the global -q stays in force when this one is absent
        help="no progress output; print the image id",
    )
    build.add_argument(
        "--iidfile",
        type=Path,
        metavar="FILE",
        help="write the image id (whenever the build succeeds, with or without an output)",
    )
    build.add_argument(
        "--depfile",
        type=Path,
        metavar="FILE",
        help="write the build's inputs as a Make dependency rule for the --iidfile (the "
        "Dockerfile, .dockerignore, every context file COPY/ADD selected, secret files)",
    )
    build.add_argument(
        "--metadata-file",
        type=Path,
        metavar="FILE",
        help="write the build result's metadata as JSON, as buildx does "
        "(containerimage.digest, image.name, ...)",
    )
    build.add_argument(
        "--secret",
        action="append",
        default=[],
        metavar="id=ID[,src=FILE|,env=VAR]",
        help="a secret for RUN --mount=type=secret (repeatable; without src or env: the "
        "variable ID, else the file ID)",
    )
    build.add_argument(
        "--ssh",
        action="append",
        default=[],
        metavar="default|ID[=SOCKET|KEY[,KEY]]",
        help="an ssh agent for RUN --mount=type=ssh (repeatable): default or ID alone is "
        "$SSH_AUTH_SOCK's agent; a socket path forwards that agent; key files are loaded "
        "into a private ssh-agent for the build (with --builder, relayed from here)",
    )
    build.add_argument(
        "--label",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="add a label to the image's config (repeatable)",
    )
    build.add_argument(
        "--annotation",
        action="append",
        default=[],
        metavar="[manifest:]KEY=VALUE",
        help="an annotation on the image manifest (repeatable; index and descriptor "
        "annotations are not supported)",
    )
    build.add_argument(
        "--network",
        choices=("default", "host", "none"),
        default="default",
        help="network of RUN steps (default: the host's; there is no bridge)",
    )
    build.add_argument(
        "--add-host",
        action="append",
        default=[],
        metavar="HOST:IP",
        help="add a line to RUN steps' /etc/hosts (repeatable; HOST=IP too)",
    )
    build.add_argument(
        "--shm-size",
        metavar="BYTES",
        help="size of RUN steps' /dev/shm (e.g. 64m, 1g; default 64m)",
    )
    build.add_argument(
        "--ulimit",
        action="append",
        default=[],
        metavar="TYPE=SOFT[:HARD]",
        help="a resource limit of RUN steps, as docker spells it (e.g. nofile=1024:2048)",
    )
    build.add_argument(
        "--allow",
        action="append",
        default=[],
        metavar="ENTITLEMENT",
        help="network.host (RUN --network=host; always granted: RUN steps use the host's "
        "network by default) or security.insecure (accepted; RUN --security=insecure is "
        "not supported)",
    )
    build.add_argument(
        "--fetch-report", type=Path, metavar="FILE", help="write the fetch report as JSON"
    )
    build.add_argument(
        "--cache-to",
        action="append",
        default=[],
        metavar="type=registry,ref=REF[,mode=min|max]",
        help="export the build cache to a registry (mode=min: the result's steps, the "
        "default; max: every step of every stage)",
    )
    build.add_argument(
        "--cache-from",
        action="append",
        default=[],
        metavar="[type=registry,ref=]REF",
        help="use a build cache exported by another build (repeatable, first wins); its "
        "hits are mounted lazily, never downloaded",
    )
    build.add_argument(
        "--no-optimize",
        dest="optimize",
        action="store_false",
        help="do not profile the image's workload to order its new layers",
    )
    build.add_argument(
        "--optimize-base",
        action="store_true",
        help="also rewrite the base image's layers with what the workload reads first "
        "(they are then no longer shared with the base image)",
    )
    add_workload_arguments(build)
    build.add_argument(
        "--record-out", type=Path, metavar="FILE", help="write the workload's file record"
    )
    build.add_argument(
        "--record-in", type=Path, metavar="FILE", help="order layers by this record instead"
    )
    build.set_defaults(run=run_build_command, make_filesystem=build_command_filesystem)


def build_command_filesystem(args: argparse.Namespace) -> LazyMountService:
    from lazybuild.context.sources import cleanup_sources, prepare_sources
    from lazybuild.imagebuild.filesystem import build_filesystem

    # Called before anything is forked or spawned: a bad value ends the build here.
    check_container_flags(args, os.environ)

    # Stdin and git contexts become a directory first: the base image ahead is read
    # from their Dockerfile (run_build_command removes it, or this when it fails).
    prepare_sources(args)
    try:
        base = _base_ahead(args)
        return build_filesystem(state_dir(args), registry_options(args), base_image=base)
    except BaseException:
        cleanup_sources(args)
        raise


def check_container_flags(args: argparse.Namespace, environ: Mapping[str, str]) -> None:
    """The values of --add-host, --shm-size, --ulimit, --allow, --ssh and
    BUILDKIT_PROGRESS, checked (``UsageError``) before a build starts anything."""
    build_flags.extra_hosts(args.add_host)
    build_flags.shm_size(args.shm_size)
    build_flags.ulimits(args.ulimit)
    build_flags.entitlements(args.allow)
    build_flags.progress_mode(args.progress, environ)
    build_flags.manifest_annotations(args.annotation)
    build_flags.ssh_sources(args.ssh, environ)


def _base_ahead(args: argparse.Namespace) -> str | None:
    """The base image the build will mount first, for its filesystem process to open
    while this one starts; None when unsure (the build then opens it when it gets there)."""
    from lazybuild.imagebuild.baseahead import first_base_image

    dockerfile: Path = args.file if args.file is not None else args.context / "Dockerfile"
    try:
        build_args = build_flags.key_values(args.build_arg, "--build-arg", os.environ)
        return first_base_image(dockerfile.read_bytes(), build_args)
    except (OSError, LazybuildError):  # the build reports it, in its own words
        return None


async def run_build_command(args: argparse.Namespace) -> int:
    # Forked by main before trio started when it could be (see lazyfs.forkedservice);
    # else started here, before the build machinery is imported and the Dockerfile
    # read: the filesystem process's own start-up overlaps with ours either way.
    from lazybuild.context.sources import cleanup_sources

    try:
        filesystem = args.filesystem or build_command_filesystem(args)
        await filesystem.spawn()
        try:
            return await _build(args, filesystem)
        finally:
            await filesystem.close()
    finally:
        cleanup_sources(args)


async def _build(args: argparse.Namespace, filesystem: LazyMountService) -> int:
    from lazybuild.cli.build_ssh import ssh_agents
    from lazybuild.errors import UsageError
    from lazybuild.exporter import ExportResult
    from lazybuild.exporter.outputs import outputs_from_flags
    from lazybuild.imagebuild.depfile import write_depfile
    from lazybuild.imagebuild.driver import BuildFailedError, run_build
    from lazybuild.imagebuild.exporting import ExportPlan, exporting_finish
    from lazybuild.imagebuild.profiling import ProfileRequest
    from lazybuild.imagebuild.request import BuildRequest
    from lazybuild.progress.buildview import BuildProgress, Mode
    from lazybuild.remotecache.spec import cache_exports, cache_imports
    from lazybuild.run.imagemount import render_fetch_report
    from lazybuild.state.atomicfile import write_atomic

    environ = dict(os.environ)
    secret_files: list[Path] = []
    build_args = build_flags.key_values(args.build_arg, "--build-arg", environ)
    from lazybuild.context.sources import named_contexts

    request = BuildRequest(
        named_contexts=named_contexts(args.build_context),
        context_dir=args.context,
        dockerfile=args.file,
        build_args=build_args,
        target=args.target,
        platform=args.platform,
        no_cache=args.no_cache,
        pull=args.pull,
        secrets=build_flags.secrets(args.secret, environ, secret_files),
        labels=build_flags.labels(args.label),
        source_date_epoch=build_flags.source_date_epoch(build_args, environ),
        network=args.network,
        extra_hosts=build_flags.extra_hosts(args.add_host),
        shm_size=build_flags.shm_size(args.shm_size),
        ulimits=build_flags.ulimits(args.ulimit),
        no_cache_filter=build_flags.stage_names(args.no_cache_filter),
        cache_from=tuple(cache_imports(args.cache_from)),
        export_cache=bool(args.cache_to),
    )
    cache_exports_wanted = cache_exports(args.cache_to)
    if not request.context_dir.is_dir():
        raise UsageError(f"build context {request.context_dir} is not a directory")
    outputs = outputs_from_flags(args.output, args.tag, push=args.push, load=args.load)
    if args.record_in is not None and args.workload_cmd is not None:
        raise UsageError("--record-in and --workload-cmd exclude each other")
    if args.optimize_base and not args.optimize:
        raise UsageError("--optimize-base and --no-optimize exclude each other")
    profile = ProfileRequest(
        command=args.workload_cmd,
        env=tuple(args.workload_env),
        timeout=args.workload_timeout,
        ready=args.workload_ready,
        network=args.workload_network,
        record_in=args.record_in,
        record_out=args.record_out,
        optimize_base=args.optimize_base,
    )
    registry = registry_options(args)
    build_flags.entitlements(args.allow)
    mode = cast(Mode, "quiet" if args.quiet else build_flags.progress_mode(args.progress, environ))
    export_result: list[ExportResult] = []
    agents = build_flags.ssh_sources(args.ssh, environ)
    with ssh_agents(agents) as sockets, BuildProgress(mode) as progress:
        request = replace(request, ssh=sockets)
        finish = exporting_finish(
            ExportPlan(
                outputs,
                cache_exports_wanted,
                profile,
                profile_workload=args.optimize,
                source_date_epoch=request.source_date_epoch,
                assemble=args.iidfile is not None,
                registry=registry,
                annotations=build_flags.manifest_annotations(args.annotation),
            ),
            progress.line,
            export_result,
        )

        try:
            outcome = await run_build(
                request,
                state_dir=state_dir(args),
                registry=registry,
                progress=progress,
                finish=finish,
                on_line=progress.line,
                on_fetch=progress.fetch_status,
                filesystem=filesystem,
            )
        except BuildFailedError as failure:
            if failure.tail and mode != "quiet":
                progress.close()
                _print_tail(failure.tail)
            raise
    if outcome.fetch_report is not None:
        if mode != "quiet":
            print(render_fetch_report(outcome.fetch_report), file=sys.stderr)
        if args.fetch_report is not None:
            text = json.dumps(outcome.fetch_report.to_json(), indent=2) + "\n"
            args.fetch_report.write_text(text)
    elif args.fetch_report is not None:
        args.fetch_report.write_text(json.dumps({"layers": []}, indent=2) + "\n")
    if export_result:
        exported = export_result[0]
        if args.iidfile is not None and exported.config_digest:
            write_atomic(args.iidfile, exported.config_digest.encode())
        if args.metadata_file is not None:
            args.metadata_file.write_text(json.dumps(exported.metadata(), indent=2) + "\n")
        if args.quiet and exported.config_digest:
            print(exported.config_digest)
    if args.depfile is not None:
        target = args.iidfile or args.metadata_file or args.depfile
        write_depfile(args.depfile, target, [*outcome.inputs, *secret_files])
    return 0


def _print_tail(tail: tuple[str, ...]) -> None:
    print("------", file=sys.stderr)
    for line in tail:
        print(f" > {line}", file=sys.stderr)
    print("------", file=sys.stderr)
