"""``optimize``: rewrite an image so that its workload's files are prefetched first.

``add_workload_arguments`` and ``workload_options`` are shared with any command that
profiles a workload (the build's ``--workload-*`` flags take the same form).
"""

from __future__ import annotations

import argparse
import json
import re
import shlex
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from lazybuild.cli.options import add_layer_writer_options, registry_options, state_dir

if TYPE_CHECKING:
    from lazybuild.image.optimize import WorkloadOptions

DEFAULT_WORKLOAD_TIMEOUT = 10.0


def add_parsers(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    optimize = commands.add_parser(
        "optimize",
        help="rewrite an image so the files its workload reads are prefetched first",
        description="Run the image's workload over a lazy mount of SOURCE, record the files "
        "it opens or reads, and write every layer as eStargz with those files first "
        "(like `ctr-remote image optimize`).",
    )
    optimize.add_argument("source", metavar="SOURCE", help="registry reference or oci:DIR[:tag]")
    optimize.add_argument(
        "destination", metavar="DESTINATION", help="registry reference or oci:DIR[:tag]"
    )
    add_workload_arguments(optimize, network_flags=("--network", "--workload-network"))
    optimize.add_argument(
        "--record-out", type=Path, metavar="FILE", help="write the record (ctr-remote's format)"
    )
    optimize.add_argument(
        "--record-in",
        type=Path,
        metavar="FILE",
        help="use this record (ours or ctr-remote's) instead of running the workload",
    )
    optimize.add_argument(
        "--no-attach-record",
        dest="attach_record",
        action="store_false",
        help="do not put the record in the image (default: an artifact in the image's index)",
    )
    add_layer_writer_options(optimize)
    optimize.set_defaults(run=run_optimize)


def add_workload_arguments(
    parser: argparse.ArgumentParser, network_flags: tuple[str, ...] = ("--workload-network",)
) -> None:
    parser.add_argument(
        "--workload-cmd",
        type=workload_command,
        metavar="COMMAND",
        help="the workload's command line, replacing the image's entrypoint and cmd: "
        'a JSON array (["python3", "-c", "..."]) or shell words (default: the image\'s)',
    )
    parser.add_argument(
        "--workload-env",
        action="append",
        default=[],
        metavar="K=V",
        help="environment for the workload, over the image's (repeatable)",
    )
    parser.add_argument(
        "--workload-timeout",
        type=seconds,
        default=DEFAULT_WORKLOAD_TIMEOUT,
        metavar="SECONDS",
        help="stop the workload after this long (default 10)",
    )
    parser.add_argument(
        "--workload-ready",
        type=ready_pattern,
        metavar="REGEX",
        help="stop the workload once a line of its output matches (a server's ready line)",
    )
    parser.add_argument(
        *network_flags,
        dest="workload_network",
        choices=("none", "host"),
        default="none",
        help="the workload's network (default none)",
    )


def workload_command(text: str) -> tuple[str, ...]:
    stripped = text.strip()
    if stripped.startswith("["):
        try:
            words = json.loads(stripped)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(f"not a JSON array: {exc}") from None
        if not isinstance(words, list) or not all(isinstance(w, str) for w in words):
            raise argparse.ArgumentTypeError("the JSON form must be an array of strings")
    else:
        try:
            words = shlex.split(stripped)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(f"cannot split {text!r}: {exc}") from None
    if not words:
        raise argparse.ArgumentTypeError("the workload command is empty")
    return tuple(words)


def seconds(text: str) -> float:
    try:
        value = float(text.strip().removesuffix("s"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be positive")
    return value


def ready_pattern(text: str) -> re.Pattern[str]:
    try:
        return re.compile(text)
    except re.error as exc:
        raise argparse.ArgumentTypeError(f"{text!r} is not a regular expression: {exc}") from None


def workload_options(args: argparse.Namespace) -> WorkloadOptions:
    from lazybuild.image.optimize import WorkloadOptions

    return WorkloadOptions(
        command=args.workload_cmd,
        env=tuple(args.workload_env),
        timeout=args.workload_timeout,
        ready=args.workload_ready,
        network=args.workload_network,
    )


async def run_optimize(args: argparse.Namespace) -> int:
    from lazybuild.errors import UsageError
    from lazybuild.image.optimize import OptimizeRequest, optimize_image
    from lazybuild.progress.lines import Progress
    from lazybuild.progress.transfer import reporting, terminal_view

    if args.record_in is not None and args.workload_cmd is not None:
        raise UsageError("--record-in and --workload-cmd exclude each other")
    progress = Progress(quiet=args.quiet)
    request = OptimizeRequest(
        source=args.source,
        destination=args.destination,
        workload=workload_options(args),
        record_in=args.record_in,
        record_out=args.record_out,
        attach_record=args.attach_record,
        chunk_size=args.chunk_size,
        compression_level=args.compression_level,
        tmpdir=args.tmpdir,
    )

    def show(stream: str, line: str) -> None:
        progress.line(f"workload {stream}: {line}")

    # Downloads and uploads show bytes, rate and ETA on a terminal (nothing elsewhere).
    with reporting(terminal_view(quiet=args.quiet)):
        result = await optimize_image(
            request,
            state_dir=state_dir(args),
            registry=registry_options(args),
            progress=progress,
            output=show,
        )
    rewritten = sum(1 for layer in result.layers if layer.rewritten)
    prioritized = sum(len(layer.prioritized) for layer in result.layers)
    summary = (
        f"done: {rewritten} layer(s) rewritten, {len(result.layers) - rewritten} kept; "
        f"{prioritized} file(s) prioritized"
    )
    if result.workload is not None and not result.workload.outcome.succeeded:
        summary += f" (the workload {result.workload.outcome.describe()})"
    progress.line(summary)
    print(result.root.digest, file=sys.stdout)
    return 0
