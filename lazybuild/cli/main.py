"""Entry point: parse arguments, run one command, turn user errors into one line."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path

import trio

from lazybuild import __version__
from lazybuild.errors import LazybuildError
from lazybuild.oci.platform import Platform

EXIT_USER_ERROR = 1
EXIT_INTERRUPTED = 130


def _size(text: str) -> int:
    units = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30}
    lowered = text.strip().lower().removesuffix("ib").removesuffix("b")
    factor = units.get(lowered[-1:], 1)
    digits = lowered[:-1] if lowered[-1:] in units else lowered
    try:
        value = int(digits) * factor
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a size (e.g. 4194304, 4MiB)") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be positive")
    return value


def _level(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 1 <= value <= 9:
        raise argparse.ArgumentTypeError("compression level must be between 1 and 9")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lazybuild", description="Container image builds over lazily pulled eStargz layers."
    )
    parser.add_argument("--version", action="version", version=f"lazybuild {__version__}")
    parser.add_argument(
        "--insecure-registry",
        action="append",
        default=[],
        metavar="HOST[:PORT]",
        help="talk plain HTTP to this registry (loopback registries always are)",
    )
    parser.add_argument(
        "--docker-config",
        type=Path,
        metavar="FILE",
        help="docker config.json with registry credentials (default: $DOCKER_CONFIG or ~/.docker)",
    )
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress output")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    inspect = commands.add_parser("inspect", help="show an image's manifests and layer formats")
    inspect.add_argument("image", help="registry reference or oci:DIR[:tag]")
    inspect.add_argument("--json", action="store_true", help="machine-readable output")

    convert = commands.add_parser("convert", help="convert an image's layers to eStargz")
    convert.add_argument("source", help="registry reference or oci:DIR[:tag]")
    convert.add_argument("destination", help="registry reference or oci:DIR[:tag]")
    convert.add_argument(
        "--chunk-size", type=_size, default=4 << 20, help="eStargz chunk size (default 4MiB)"
    )
    convert.add_argument(
        "--compression-level", type=_level, help="gzip level 1-9 (default: the writer's)"
    )
    convert.add_argument("--platform", help="convert only this platform of an index (os/arch)")
    convert.add_argument("--tmpdir", type=Path, help="directory for temporary layer files")
    return parser


def _insecure_registries(args: argparse.Namespace) -> list[str]:
    from_env = os.environ.get("LAZYBUILD_INSECURE_REGISTRIES", "")
    return [*args.insecure_registry, *(h for h in from_env.split(",") if h.strip())]


async def _run_inspect(args: argparse.Namespace) -> int:
    from lazybuild.imagestore import open_source
    from lazybuild.inspect import inspect_image
    from lazybuild.registry.client import RegistryClient

    async with RegistryClient(
        insecure_registries=_insecure_registries(args), docker_config=args.docker_config
    ) as client:
        report = await inspect_image(open_source(args.image, client))
    if args.json:
        print(json.dumps(report.to_json(), indent=2))
    else:
        print(report.to_text())
    return 0


async def _run_convert(args: argparse.Namespace) -> int:
    from lazybuild.convert import ConvertOptions, convert_image
    from lazybuild.imagestore import open_source, open_target
    from lazybuild.progress import Progress, human_size
    from lazybuild.registry.client import RegistryClient

    progress = Progress(quiet=args.quiet)
    options = ConvertOptions(
        chunk_size=args.chunk_size,
        compression_level=args.compression_level,
        platform=Platform.parse(args.platform) if args.platform else None,
        tmpdir=args.tmpdir,
    )
    async with RegistryClient(
        insecure_registries=_insecure_registries(args), docker_config=args.docker_config
    ) as client:
        source = open_source(args.source, client)
        target = open_target(args.destination, client, source)
        progress.line(f"converting {source.description} -> {target.description}")
        result = await convert_image(source, target, options, progress)
    converted = [o for o in result.layers if o.converted]
    before = sum(o.source.size for o in converted)
    after = sum(o.result.size for o in converted)
    progress.line(
        f"done: {len(converted)} layer(s) converted ({human_size(before)} -> {human_size(after)}),"
        f" {len(result.layers) - len(converted)} kept"
    )
    print(result.root.digest)
    return 0


_COMMANDS: dict[str, Callable[[argparse.Namespace], Awaitable[int]]] = {
    "inspect": _run_inspect,
    "convert": _run_convert,
}


def _user_error(exc: BaseException) -> LazybuildError | OSError | None:
    """The user-facing error inside ``exc`` (trio wraps task errors in exception groups)."""
    if isinstance(exc, LazybuildError | OSError):
        return exc
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            found = _user_error(inner)
            if found is not None:
                return found
    return None


def _is_interrupt(exc: BaseException) -> bool:
    if isinstance(exc, KeyboardInterrupt):
        return True
    if isinstance(exc, BaseExceptionGroup):
        return any(_is_interrupt(inner) for inner in exc.exceptions)
    return False


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return trio.run(_COMMANDS[args.command], args)
    except BaseException as exc:
        if _is_interrupt(exc):
            print("lazybuild: interrupted", file=sys.stderr)
            return EXIT_INTERRUPTED
        error = _user_error(exc)
        if error is None:
            raise
        message = str(error) if isinstance(error, LazybuildError) else _os_error_text(error)
        print(f"lazybuild: error: {message}", file=sys.stderr)
        return EXIT_USER_ERROR


def _os_error_text(error: OSError) -> str:
    where = f": {error.filename}" if error.filename else ""
    return f"{error.strerror or error}{where}"


def run() -> None:
    sys.exit(main())
