"""Entry point: parse arguments, run one command, turn user errors into one line."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

import trio

from lazybuild import __version__
from lazybuild.cli import cache_commands, image_commands, run_commands
from lazybuild.cli.options import add_global_options
from lazybuild.errors import LazybuildError

EXIT_USER_ERROR = 1
EXIT_INTERRUPTED = 130


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lazybuild", description="Container image builds over lazily pulled eStargz layers."
    )
    parser.add_argument("--version", action="version", version=f"lazybuild {__version__}")
    add_global_options(parser)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    image_commands.add_parsers(commands)
    run_commands.add_parsers(commands)
    cache_commands.add_parsers(commands)
    return parser


# Commands that touch mounts or caches first undo what killed runs left behind.
_COMMANDS_USING_STATE = frozenset({"mount", "umount", "run", "du", "prune"})


def _clean_up_after_killed_runs(args: argparse.Namespace) -> None:
    from lazybuild.cli.options import state_dir
    from lazybuild.lazyfs.stale import cleanup_stale_mounts

    for mountpoint in cleanup_stale_mounts(state_dir(args)):
        if not args.quiet:
            print(
                f"lazybuild: removed a stale mount of a killed run: {mountpoint}", file=sys.stderr
            )


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


def _os_error_text(error: OSError) -> str:
    where = f": {error.filename}" if error.filename else ""
    return f"{error.strerror or error}{where}"


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # Library warnings (e.g. a layer that fails verification) are one line each.
    logging.basicConfig(
        level=logging.ERROR if args.quiet else logging.WARNING,
        format="lazybuild: %(message)s",
    )
    try:
        if args.command in _COMMANDS_USING_STATE:
            _clean_up_after_killed_runs(args)
        exit_code: int = trio.run(args.run, args)
        return exit_code
    except BaseException as exc:
        if _is_interrupt(exc):
            print("lazybuild: interrupted", file=sys.stderr)
            return EXIT_INTERRUPTED
        error = _user_error(exc)
        if error is None:
            raise
        message = str(error) if isinstance(error, LazybuildError) else _os_error_text(error)
        print(f"lazybuild: error: {message}", file=sys.stderr)
        return error.exit_code if isinstance(error, LazybuildError) else EXIT_USER_ERROR


def run() -> None:
    sys.exit(main())
