"""Entry point: parse arguments, run one command, turn user errors into one line."""

from __future__ import annotations

import argparse
import errno
import logging
import signal
import sys
import threading
from collections.abc import Sequence
from typing import TYPE_CHECKING

from lazybuild import __version__
from lazybuild.cli import (
    build_commands,
    cache_commands,
    check_commands,
    image_commands,
    optimize_commands,
    run_commands,
    serve_commands,
)
from lazybuild.cli.examples import add_examples
from lazybuild.cli.options import add_global_options, state_dir
from lazybuild.errors import LazybuildError, reported_error

if TYPE_CHECKING:
    from lazybuild.lazyfs.client import LazyMountService

EXIT_USER_ERROR = 1
EXIT_INTERRUPTED = 130


async def _run_command(args: argparse.Namespace) -> int:
    """The command; a filesystem forked for it is stopped even if it never got to it."""
    try:
        return await _run_with_cleanup(args)
    finally:
        if args.filesystem is not None:  # a no-op when the command closed it
            await args.filesystem.close()


async def _run_with_cleanup(args: argparse.Namespace) -> int:
    """Clean up after killed runs, then run the command; Ctrl-C (SIGINT) and SIGTERM
    interrupt it as a cancellation, so its cleanup runs.

    Both arrive through a receiver, never as a KeyboardInterrupt raised at whatever line
    the main thread is on: one raised between making a staging area's directories and
    entering the ``try`` that removes them left the area behind. A second Ctrl-C, while
    the command cleans up, is a KeyboardInterrupt as before, so a stuck cleanup can be
    forced. The receiver is open before the clean-up after killed runs starts, so a
    signal during it lets it finish and then interrupts. Commands that want signals for
    themselves (``mount``, ``run``) open their own receivers, which take precedence
    while they are open.
    """
    if threading.current_thread() is not threading.main_thread():
        _clean_up_after_killed_runs(args)
        exit_code: int = await args.run(args)
        return exit_code
    import trio

    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as interruptions:
        if _termination.requested:
            raise KeyboardInterrupt
        _clean_up_after_killed_runs(args)
        async with trio.open_nursery() as nursery:

            async def until_interrupted() -> None:
                async for _ in interruptions:
                    signal.signal(signal.SIGINT, signal.default_int_handler)
                    raise KeyboardInterrupt

            nursery.start_soon(until_interrupted)
            exit_code = await args.run(args)
            nursery.cancel_scope.cancel()
    return exit_code


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lazybuild", description="Container image builds over lazily pulled eStargz layers."
    )
    parser.add_argument("--version", action="version", version=f"lazybuild {__version__}")
    add_global_options(parser)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    build_commands.add_parsers(commands)
    image_commands.add_parsers(commands)
    optimize_commands.add_parsers(commands)
    run_commands.add_parsers(commands)
    cache_commands.add_parsers(commands)
    serve_commands.add_parsers(commands)
    _add_builder(commands.choices["build"])
    check_commands.add_check_arguments(commands.choices["build"])
    add_examples(parser, commands)
    return parser


def _add_builder(build: argparse.ArgumentParser) -> None:
    """``build --builder ADDR``: the same command, done by a daemon (``lazybuild serve``)."""
    from lazybuild.daemon.client import add_builder_argument

    add_builder_argument(build)


def _route_to_builder(args: argparse.Namespace) -> None:
    """A build given a builder is the daemon's: no filesystem here, the client runs,
    without trio (``run_blocking``)."""
    args.run_blocking = None
    if args.command == "build" and args.builder is not None:
        from lazybuild.daemon.buildclient import run_remote_build

        args.run_blocking = run_remote_build
        args.make_filesystem = None
    if args.command == "build":
        check_commands.route_build_checks(args)


# Commands that touch mounts or caches first undo what killed runs left behind.
_COMMANDS_USING_STATE = frozenset({"build", "optimize", "mount", "umount", "run", "du", "prune"})


def _forked_filesystem(args: argparse.Namespace) -> LazyMountService | None:
    """The filesystem process of a command that mounts images (``make_filesystem``),
    forked now, while this process is one thread and trio not running: it then serves
    ~0.2 s sooner than a new interpreter would (see ``lazyfs.forkedservice``). None
    when the command wants none or this process cannot fork; the command starts its own."""
    make_filesystem = getattr(args, "make_filesystem", None)
    if make_filesystem is None:
        return None
    from lazybuild.lazyfs.forkedservice import can_fork

    if not can_fork():
        return None
    filesystem: LazyMountService = make_filesystem(args)
    filesystem.fork()
    return filesystem


def _clean_up_after_killed_runs(args: argparse.Namespace) -> None:
    if args.command not in _COMMANDS_USING_STATE:
        return
    if getattr(args, "builder", None) is not None:
        return  # the daemon's state, which it looks after itself
    from lazybuild.cli.options import state_dir
    from lazybuild.executor.orphans import reap_orphaned_containers
    from lazybuild.executor.runc import DEFAULT_RUNC, DEFAULT_STATE_ROOT
    from lazybuild.lazyfs.stale import cleanup_stale_mounts

    # Containers first: an orphan keeps its overlay, and the mounts under it, busy.
    for container_id in reap_orphaned_containers(DEFAULT_RUNC, DEFAULT_STATE_ROOT):
        if not args.quiet:
            print(f"lazybuild: removed container {container_id} of a killed run", file=sys.stderr)
    for mountpoint in cleanup_stale_mounts(state_dir(args)):
        if not args.quiet:
            print(
                f"lazybuild: removed a stale mount of a killed run: {mountpoint}", file=sys.stderr
            )


def _user_error(exc: BaseException) -> LazybuildError | OSError | None:
    """The user-facing error of ``exc``: trio wraps task errors in exception groups, and
    a group whose failures are all user errors is reported as its most telling one (see
    ``errors.reported_error``); a group holding anything else is a bug."""
    found = reported_error(exc, also=(OSError,))
    return found if isinstance(found, LazybuildError | OSError) else None


def _state_dir_full(error: OSError, args: argparse.Namespace) -> str | None:
    """A write that failed for want of space in the state directory, said as such rather
    than as whichever write happened to fail first (see ``cache.space``); else None."""
    from lazybuild.cache.space import StateDirFullError, is_no_space

    state = state_dir(args)
    if not is_no_space(error, within=state):
        return None
    return str(StateDirFullError(state, f"running lazybuild {args.command}"))


def _is_interrupt(exc: BaseException) -> bool:
    if isinstance(exc, KeyboardInterrupt):
        return True
    if isinstance(exc, BaseExceptionGroup):
        return any(_is_interrupt(inner) for inner in exc.exceptions)
    return False


def _os_error_text(error: OSError, filesystem: LazyMountService | None = None) -> str:
    """The error with the file it concerns; when the system named none, what the lazy
    filesystem knows of its failed reads (which file of which layer, and why), else the
    error's name at least."""
    text = str(error.strerror or error)
    if error.filename:
        return f"{text}: {error.filename}"
    failures = filesystem.read_failures if filesystem is not None else ()
    if failures:
        from lazybuild.lazyfs.client import describe_read_failures

        return f"{text} ({describe_read_failures(failures)})"
    name = errno.errorcode.get(error.errno or 0)
    return f"{text} ({name}, no file named)" if name else text


class _TerminationFlag:
    """SIGTERM before trio takes signals over: noted, acted on once trio runs.

    The handler must not raise. A KeyboardInterrupt raised inside an ``exec`` of a
    string (dataclasses and namedtuple make their methods that way, at import time)
    leaves CPython's "unhandled KeyboardInterrupt" flag set even though we catch it, and
    the interpreter then kills itself with SIGINT on exit, whatever status we return.
    """

    def __init__(self) -> None:
        self.requested = False

    def note(self, signum: int, frame: object) -> None:
        self.requested = True


_termination = _TerminationFlag()


def main(argv: Sequence[str] | None = None) -> int:
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _termination.note)
    args: argparse.Namespace | None = None
    try:
        args = build_parser().parse_args(argv)
        _route_to_builder(args)
        # Library warnings (e.g. a layer that fails verification) are one line each.
        logging.basicConfig(
            level=logging.ERROR if args.quiet else logging.WARNING,
            format="lazybuild: %(message)s",
        )
        if args.run_blocking is not None:
            args.filesystem = None
            blocking_exit: int = args.run_blocking(args, lambda: _termination.requested)
            return blocking_exit
        # Only from the command line: a caller of main() may not expect a fork of itself.
        args.filesystem = _forked_filesystem(args) if argv is None else None
        import trio

        exit_code: int = trio.run(_run_command, args)
        return exit_code
    except BaseException as exc:
        if _is_interrupt(exc):
            _ignore_further_interrupts()
            print("lazybuild: interrupted", file=sys.stderr)
            return EXIT_INTERRUPTED
        error = _user_error(exc)
        if error is None:
            raise
        if isinstance(error, LazybuildError):
            message = str(error)
        else:
            full = _state_dir_full(error, args) if args is not None else None
            message = full or _os_error_text(error, getattr(args, "filesystem", None))
        print(f"lazybuild: error: {' '.join(message.split())}", file=sys.stderr)
        return error.exit_code if isinstance(error, LazybuildError) else EXIT_USER_ERROR


def _ignore_further_interrupts() -> None:
    """The command is over: a Ctrl-C now (or one trio re-delivers as a receiver closes)
    must not print a traceback or turn the exit status into death by signal."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)


def run() -> None:
    code = main()
    _ignore_further_interrupts()
    sys.exit(code)
